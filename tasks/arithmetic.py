"""Multi-digit addition: ``"47+385="`` -> ``"432"``. Carries make it a small state-tracking problem."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyrl.tasks.base import Example, Verdict, exact_match, perturb_digits


@dataclass(frozen=True)
class Arithmetic:
    name: str = "arithmetic"
    max_digits: int = 2

    def make(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        out = []
        for _ in range(n):
            a = rng.randrange(10 ** rng.randint(1, self.max_digits))
            b = rng.randrange(10 ** rng.randint(1, self.max_digits))
            out.append(Example(prompt=f"{a}+{b}=", answer=str(a + b), meta={"a": a, "b": b}))
        return out

    def verify(self, completion: str, answer: str) -> Verdict:
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        return perturb_digits(example.answer, rng)
