"""Math answers checked symbolically with ``math-verify`` (LaTeX, fractions, decimals: ``1/2`` == ``0.5``)."""

from __future__ import annotations

from hyrl.rl.rewards import register


@register("math_verify")
def math_verify(prompts: list[str], completions: list[str], *, answer: list[str], **_) -> list[float]:
    """1.0 when the completion's final answer equals the reference mathematically.

    >>> math_verify(["half?"], ["The answer is $0.5$"], answer=["$\\\\frac{1}{2}$"])
    [1.0]
    >>> math_verify(["half?"], ["The answer is $0.4$"], answer=["$\\\\frac{1}{2}$"])
    [0.0]
    """
    from math_verify import parse, verify

    return [1.0 if verify(parse(a), parse(c)) else 0.0 for c, a in zip(completions, answer)]
