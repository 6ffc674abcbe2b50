"""Reverse a digit string: ``"rev 3141="`` -> ``"1413"``. Needs the whole prompt held in state."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyrl.tasks.base import Example, Verdict, exact_match, perturb_digits


@dataclass(frozen=True)
class Reversal:
    name: str = "reversal"
    min_len: int = 2
    max_len: int = 5

    def make(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        out = []
        for _ in range(n):
            s = "".join(rng.choice("0123456789") for _ in range(rng.randint(self.min_len, self.max_len)))
            out.append(Example(prompt=f"rev {s}=", answer=s[::-1], meta={"s": s}))
        return out

    def verify(self, completion: str, answer: str) -> Verdict:
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        return perturb_digits(example.answer, rng)
