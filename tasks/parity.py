"""Parity of a bit string: ``"par 10110="`` -> ``"1"``.

The classic task a recurrent state solves and attention struggles with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyrl.tasks.base import Example, Verdict, exact_match


@dataclass(frozen=True)
class Parity:
    name: str = "parity"
    min_len: int = 2
    max_len: int = 8

    def make(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        out = []
        for _ in range(n):
            bits = "".join(rng.choice("01") for _ in range(rng.randint(self.min_len, self.max_len)))
            out.append(Example(prompt=f"par {bits}=", answer=str(bits.count("1") % 2), meta={"bits": bits}))
        return out

    def verify(self, completion: str, answer: str) -> Verdict:
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        return "1" if example.answer == "0" else "0"
