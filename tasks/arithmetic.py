"""Multi-digit addition: ``"47+385="`` -> ``"432"``. Carries make it a small state-tracking problem."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyrl.tasks.base import Example, Verdict, exact_match, perturb_digits


def carry_free_sum(a: int, b: int) -> int:
    """The sum with every carry dropped, digit by digit: the classic slip (``47+385`` -> ``322``)."""
    out, place = 0, 1
    while a or b:
        out += (a % 10 + b % 10) % 10 * place
        a, b, place = a // 10, b // 10, place * 10
    return out


@dataclass(frozen=True)
class Arithmetic:
    """``carry_slip``: the fraction of carrying sums whose *demonstration* (the SFT completion, not the answer that
    rewards and evaluation check) drops the carries, as a sloppy teacher would. A model that imitates such a teacher
    puts most of its mass on the wrong answer of every carrying sum; a verifier's reward can correct it."""

    name: str = "arithmetic"
    max_digits: int = 2
    carry_slip: float = 0.0

    def make(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        out = []
        for _ in range(n):
            a = rng.randrange(10 ** rng.randint(1, self.max_digits))
            b = rng.randrange(10 ** rng.randint(1, self.max_digits))
            meta = {"a": a, "b": b}
            slipped = carry_free_sum(a, b)
            # A separate stream per prompt, so the prompts do not depend on carry_slip.
            if slipped != a + b and random.Random(f"slip:{a}+{b}:{seed}").random() < self.carry_slip:
                meta["demonstration"] = str(slipped)
            out.append(Example(prompt=f"{a}+{b}=", answer=str(a + b), meta=meta))
        return out

    def verify(self, completion: str, answer: str) -> Verdict:
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        return perturb_digits(example.answer, rng)
