"""Format rewards: the completion is a bare answer (digits only) and nothing else."""

from __future__ import annotations

from hyrl.rl.rewards import register


@register("digits_only")
def digits_only(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1.0 when the completion is one run of digits (surrounding whitespace allowed).

    >>> digits_only(["1+2="], ["3"])
    [1.0]
    >>> digits_only(["1+2="], ["3 apples"])
    [0.0]
    """
    return [1.0 if c.strip().isdigit() else 0.0 for c in completions]
