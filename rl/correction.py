"""Train/inference mismatch correction: per-token weights from learner vs rollout log-probs.

The rollout engine samples from p_rollout while the learner differentiates p_learner; even with identical weights
the two differ by kernel numerics (bf16 state, compiled graphs). Each token's policy-gradient term is weighted by
w_t, computed from the ratio r_t = p_learner / p_rollout on the sampled token:

    tis     w_t = min(r_t, cap)                         (truncated importance sampling)
    icepop  w_t = r_t if low <= r_t <= high else 0      (tokens with a large mismatch are dropped)
    none    w_t = 1

Weights are detached and non-negative, so scaling a token's advantage by w_t scales its clipped surrogate loss by
exactly w_t (min(c1 A w, c2 A w) = w min(c1 A, c2 A) for w >= 0). Tokens the engine did not score (NaN) get w = 1.
"""

from __future__ import annotations

import torch

from hyrl.config import Correction, IcePopCorrection, TISCorrection
from hyrl.rollout.mismatch import per_token_kl


def importance_weights(
    learner_logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor, mask_BT: torch.Tensor, correction: Correction
) -> torch.Tensor:
    """Per-token weights w_BT (0 on padding) for the configured correction."""
    log_ratio = torch.nan_to_num((learner_logp_BT - rollout_logp_BT).float(), nan=0.0)
    ratio = log_ratio.exp()
    if isinstance(correction, TISCorrection):
        w = ratio.clamp(max=correction.cap)
    elif isinstance(correction, IcePopCorrection):
        w = torch.where((ratio >= correction.low) & (ratio <= correction.high), ratio, torch.zeros_like(ratio))
    else:
        w = torch.ones_like(ratio)
    return (w * mask_BT).detach()


def mismatch_stats(learner_logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict:
    """Mismatch KL(rollout || learner) per token (k3 estimator, >= 0) and max |delta log-prob| over real tokens."""
    m = mask_BT.bool() & ~torch.isnan(rollout_logp_BT)
    if not m.any():
        return {"mismatch/kl": 0.0, "mismatch/max_abs_logprob_diff": 0.0}
    kl = per_token_kl(rollout_logp_BT[m], learner_logp_BT[m])
    delta = (learner_logp_BT - rollout_logp_BT)[m].abs()
    return {"mismatch/kl": kl.mean().item(), "mismatch/max_abs_logprob_diff": delta.max().item()}
