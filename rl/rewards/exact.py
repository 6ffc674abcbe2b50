"""Exact-match rewards for the synthetic task families (arithmetic, reversal, parity)."""

from __future__ import annotations

from hyrl.rl.rewards import register
from hyrl.tasks import get_task


@register("exact_match")
def exact_match(prompts: list[str], completions: list[str], *, answer: list[str], task: list[str], **_) -> list[float]:
    """1.0 when the completion's first token is the reference answer, per the sample's task verifier.

    >>> exact_match(["2+2="], ["4"], answer=["4"], task=["arithmetic"])
    [1.0]
    >>> exact_match(["2+2="], ["5"], answer=["4"], task=["arithmetic"])
    [0.0]
    """
    return [get_task(t).verify(c, a).score for c, a, t in zip(completions, answer, task)]
