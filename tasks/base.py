"""What a task is: examples with a checkable answer, and a verifier that says why a completion failed."""

from __future__ import annotations

import hashlib
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


# One prompt in HELD_OUT_BUCKETS belongs to the held-out split, by a stable hash of its text: no seed, run or
# command can put a held-out prompt into training, and `hyrl eval` scores exactly the prompts training never saw.
HELD_OUT_BUCKETS = 8


def is_held_out(prompt: str) -> bool:
    """Whether ``prompt`` is in the held-out split (stable across processes, machines and Python versions)."""
    return hashlib.blake2b(prompt.encode(), digest_size=8).digest()[0] % HELD_OUT_BUCKETS == 0


def split_examples(task: Task, n: int, seed: int, split: str) -> list[Example]:
    """The first ``n`` examples of ``task``'s stream for ``seed`` that fall in ``split`` ("train" or "eval").

    Task streams are prefix-stable (``make(k)`` starts with ``make(j)`` for j < k), so asking for more examples
    only appends. A small problem space repeats prompts within a split, never across splits.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if getattr(task, "presplit", False):  # a user's file is scored as given: it is its own held-out set
        return task.make(n, seed)
    k = n * (2 * HELD_OUT_BUCKETS if split == "eval" else 2)
    for _ in range(6):
        picked = [e for e in task.make(k, seed) if is_held_out(e.prompt) == (split == "eval")]
        if len(picked) >= n:
            return picked[:n]
        k *= 4
    raise ValueError(f"task {task.name!r}: found only {len(picked)} {split} examples in {k // 4} draws (seed "
                     f"{seed}); its problem space is too small for a held-out split of {n} (fix: a harder setting)")
