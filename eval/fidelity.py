"""What a checkpoint costs and how faithfully the rollout engine runs it.

- ``probe_mismatch``: the engine samples completions for probe prompts; the learner-side model scores the same
  tokens; the per-token KL between the two is what RL's importance ratios would silently absorb.
- ``cache_memory``: bytes of inference state one sequence holds after a prefill of L tokens (the hybrid's selling
  point: GDN layers keep a fixed-size state, only attention layers grow with L). Measured from the cache the
  model returns, so a dense baseline is measured the same way; on CUDA the peak allocation of the prefill too.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hyrl.rollout.mismatch import learner_logprobs, mismatch


def probe_mismatch(engine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                   max_tokens: int, seed: int) -> dict[str, float]:
    """KL(rollout || learner) per token (k3 estimator) and max |delta log-prob| on engine-sampled completions."""
    from hyrl.rollout.batch import Sampling

    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    batch = engine.generate(ids, Sampling(max_tokens=max_tokens, temperature=1.0, seed=seed))
    m = mismatch(batch.logprobs, learner_logprobs(model, batch.prompt_ids, batch.completion_ids))
    return {"kl_mean": m.kl_mean, "kl_max": m.kl_max, "max_abs_delta": m.max_abs_delta, "tokens": m.num_tokens}


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor reachable from ``obj`` (dataclasses, HF ``Cache`` objects, lists, dicts)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


@torch.no_grad()
def cache_memory(model: PreTrainedModel, context_lengths: list[int], *, seed: int = 0) -> list[dict[str, float]]:
    """Per context length L: MiB of cache one sequence holds after prefilling L random tokens (and CUDA peak MiB)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    rows = []
    for L in context_lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, L), generator=gen).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        out = model(input_ids=ids, use_cache=True, **keep)
        row = {"context": L, "cache_mib": tensor_bytes(out.past_key_values) / 2**20}
        if device.type == "cuda":
            row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(row)
        del out
    return rows
