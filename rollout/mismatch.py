"""Rollout-vs-learner mismatch on the sampled tokens: per-token KL estimate and max |delta log-prob|.

With tokens sampled from the rollout policy r and learner log-probs l for the same tokens, d = l - r per token:
    k1 = -d                       (unbiased KL(r || l) estimate, can be negative per token)
    k3 = exp(d) - d - 1           (unbiased, >= 0 per token; Schulman's low-variance estimator, used by prime-rl)
A correct rollout stack gives max |d| ~ 1e-6 in fp32; prime-rl targets a mean KL < 0.01 in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mismatch:
    """Summary over all compared tokens."""

    num_tokens: int
    kl_mean: float  # mean k3
    kl_max: float
    max_abs_delta: float
    mean_abs_delta: float


def per_token_kl(rollout_lp: torch.Tensor, learner_lp: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(rollout || learner) per token (same shape as the inputs, >= 0)."""
    d = learner_lp.double() - rollout_lp.double()
    return torch.expm1(d) - d


def mismatch(rollout_lp: Sequence[Sequence[float]], learner_lp: Sequence[Sequence[float]]) -> Mismatch:
    """Compare ragged per-sequence log-probs (equal lengths per sequence required)."""
    if len(rollout_lp) != len(learner_lp):
        raise ValueError(f"{len(rollout_lp)} rollout sequences vs {len(learner_lp)} learner sequences")
    for i, (r, l) in enumerate(zip(rollout_lp, learner_lp)):
        if len(r) != len(l):
            raise ValueError(f"sequence {i}: {len(r)} rollout log-probs vs {len(l)} learner log-probs")
    r = torch.tensor([x for seq in rollout_lp for x in seq], dtype=torch.float64)
    l = torch.tensor([x for seq in learner_lp for x in seq], dtype=torch.float64)
    if r.numel() == 0:
        return Mismatch(0, 0.0, 0.0, 0.0, 0.0)
    kl, delta = per_token_kl(r, l), (l - r).abs()
    return Mismatch(r.numel(), kl.mean().item(), kl.max().item(), delta.max().item(), delta.mean().item())


@torch.no_grad()
def learner_logprobs(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
    temperature: float = 1.0,
) -> list[list[float]]:
    """Log-probs of each completion token under an HF causal LM at the sampling ``temperature`` (one unpadded
    forward per sequence, fp32)."""
    out: list[list[float]] = []
    device = next(model.parameters()).device
    for prompt, completion in zip(prompt_ids, completion_ids):
        ids = torch.tensor([list(prompt) + list(completion)], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        lp = logits.log_softmax(-1).gather(-1, torch.tensor(completion, device=device)[:, None])[:, 0]
        out.append(lp.cpu().tolist())
    return out
