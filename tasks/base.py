"""What a task is: examples with a checkable answer, and a verifier that says why a completion failed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Example:
    """One prompt with its reference answer; ``meta`` carries task-specific fields (e.g. operands)."""

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement: score in [0, 1] and a human-readable reason."""

    score: float
    reason: str


class Task(Protocol):
    """A task family: deterministic example generation per seed, verification, and a plausible wrong answer."""

    name: str

    def make(self, n: int, seed: int) -> list[Example]: ...

    def verify(self, completion: str, answer: str) -> Verdict: ...

    def wrong_answer(self, example: Example, rng: random.Random) -> str: ...


def first_token(completion: str) -> str:
    """The answer a model gave: the completion up to its first whitespace (special tokens already stripped)."""
    parts = completion.strip().split()
    return parts[0] if parts else ""


def exact_match(completion: str, answer: str) -> Verdict:
    """Score 1 when the first whitespace-separated token equals the answer."""
    got = first_token(completion)
    if got == answer:
        return Verdict(1.0, "correct")
    return Verdict(0.0, f"expected {answer!r}, got {got!r}")


def perturb_digits(answer: str, rng: random.Random) -> str:
    """A wrong answer close to the right one: one digit changed."""
    i = rng.randrange(len(answer))
    choices = [d for d in "0123456789" if d != answer[i]]
    return answer[:i] + rng.choice(choices) + answer[i + 1 :]
