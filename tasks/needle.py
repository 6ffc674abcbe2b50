"""Needle in a haystack, RULER style: a key's number is stated once inside filler text, then asked for.

``"... The magic number for plum is 4821. ... The sky was clear. ...\\nQ: the magic number for plum?\\nA: "`` ->
``"4821"``. Distractor facts about other keys make it retrieval rather than copying the last number seen. The
context length is counted in filler words (``context_words``); the evaluator reports the measured token length,
which depends on the tokenizer. What a fixed-size recurrent state can hold is exactly what this probes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyrl.tasks.base import Example, Verdict, exact_match, perturb_digits

KEYS = ("plum", "fig", "lime", "pear", "kiwi", "date", "yam", "okra", "leek", "corn", "bean", "sage")
FILLER = (
    "The sky was clear.", "A cat slept on the mat.", "Rain fell in the hills.", "The road ran north.",
    "Bread was baked at dawn.", "The river was slow.", "Wind moved the grass.", "A bell rang twice.",
)


@dataclass(frozen=True)
class Needle:
    name: str = "needle"
    context_words: int = 64
    distractors: int = 2

    def make(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}:{self.context_words}:{seed}")
        out = []
        for _ in range(n):
            keys = rng.sample(KEYS, 1 + self.distractors)
            facts = [f"The magic number for {key} is {rng.randrange(1000, 10000)}." for key in keys]
            sentences: list[str] = []
            while sum(len(s.split()) for s in sentences) < self.context_words:
                sentences.append(rng.choice(FILLER))
            for fact in facts:
                sentences.insert(rng.randint(0, len(sentences)), fact)
            answer = facts[0].rsplit(" ", 1)[1].rstrip(".")
            prompt = " ".join(sentences) + f"\nQ: the magic number for {keys[0]}?\nA: "
            out.append(Example(prompt=prompt, answer=answer, meta={"key": keys[0], "words": self.context_words}))
        return out

    def verify(self, completion: str, answer: str) -> Verdict:
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        return perturb_digits(example.answer, rng)
