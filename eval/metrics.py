"""Per-task numbers from per-sample verdicts: accuracy, unbiased pass@k, mean completion length."""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n - c, k) / C(n, k) (Chen et al., 2021).

    Computed as a running product, which stays exact-enough for large ``n`` where the binomials overflow floats.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def ks_for(n: int) -> list[int]:
    """The k values reported for ``n`` samples per prompt: powers of two up to n, and n itself."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    return ks if n in ks else [*ks, n]


def summarize(scores: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Metrics over prompts with ``n`` samples each (``scores[i][j]`` in [0, 1]; a sample counts correct at 1).

    accuracy: mean score over all samples (= pass@1 for 0/1 scores); pass@k: mean over prompts of the unbiased
    estimator; mean_length: completion tokens per sample.
    """
    if not scores:
        return {"accuracy": 0.0, "mean_length": 0.0, "num_prompts": 0, "samples_per_prompt": 0}
    n = len(scores[0])
    if any(len(s) != n for s in scores):
        raise ValueError("every prompt needs the same number of samples")
    flat = [x for s in scores for x in s]
    out: dict[str, float] = {
        "accuracy": sum(flat) / len(flat),
        "mean_length": sum(x for row in lengths for x in row) / max(1, sum(len(row) for row in lengths)),
        "num_prompts": len(scores),
        "samples_per_prompt": n,
    }
    for k in ks_for(n):
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(x >= 1.0 for x in s), k) for s in scores) / len(scores)
    return out
