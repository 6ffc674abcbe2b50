"""A user's own task from a JSONL or Parquet file, read through ``datasets``: one row per example.

Each row needs the answer field and the fields the prompt template names (default: ``{prompt}`` and ``answer``).
``verifier`` picks how a completion is checked: ``exact`` (first word equals the answer), ``contains`` (the answer
appears anywhere) or ``math`` (final answers equal mathematically, via ``math-verify``; GSM8K-style data).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from hyrl.tasks.base import Example, Verdict, exact_match

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
VERIFIERS = ("exact", "contains", "math")


def is_task_file(spec: str) -> bool:
    """Whether a task spec names a data file rather than a registered task family."""
    return Path(spec).suffix in FILE_SUFFIXES


def math_match(completion: str, answer: str) -> Verdict:
    """Score 1 when the completion's final answer equals ``answer`` mathematically (``1/2`` == ``0.5``)."""
    from math_verify import parse, verify

    gold, got = parse(answer), parse(completion)
    if not gold:
        return Verdict(0.0, f"reference answer {answer!r} has no parsable math")
    if verify(gold, got):
        return Verdict(1.0, "correct")
    return Verdict(0.0, f"expected {answer!r}, parsed {[str(x) for x in got][:1] or 'nothing'} from the completion")


@dataclass(frozen=True)
class FileTask:
    path: str
    template: str = "{prompt}"
    answer_field: str = "answer"
    verifier: str = "exact"

    def __post_init__(self) -> None:
        p = Path(self.path)
        if p.suffix not in FILE_SUFFIXES:
            raise ValueError(f"{p}: task files are {', '.join(FILE_SUFFIXES)}")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such task file (fix: check the path, relative to {Path.cwd()})")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"{p}: verifier {self.verifier!r} unknown; available: {', '.join(VERIFIERS)}")

    @property
    def name(self) -> str:
        return Path(self.path).stem

    presplit = True  # the file is the evaluation set as the user wrote it (no hash split)

    def make(self, n: int, seed: int) -> list[Example]:
        """Up to ``n`` rows, shuffled by ``seed`` (the same seed gives the same rows)."""
        from datasets import Dataset

        p = Path(self.path)
        reader = Dataset.from_json if FILE_SUFFIXES[p.suffix] == "json" else Dataset.from_parquet
        rows = reader(str(p)).to_list()
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f} | {self.answer_field}
        for i, row in enumerate(rows):
            missing = sorted(fields - set(row))
            if missing:
                raise ValueError(f"{p}: row {i} lacks {', '.join(missing)} (fix: add the field to every row, or set "
                                 f"template/answer_field to the file's column names: {', '.join(sorted(row))})")
        random.Random(seed).shuffle(rows)
        return [Example(prompt=self.template.format(**row), answer=str(row[self.answer_field]), meta={"row": i})
                for i, row in enumerate(rows[:n])]

    def verify(self, completion: str, answer: str) -> Verdict:
        if self.verifier == "math":
            return math_match(completion, answer)
        if self.verifier == "contains":
            return Verdict(1.0, "correct") if answer in completion else Verdict(0.0, f"{answer!r} not in completion")
        return exact_match(completion, answer)

    def wrong_answer(self, example: Example, rng: random.Random) -> str:
        raise ValueError(f"{self.path}: a file task has no wrong-answer generator (fix: DPO from a file needs "
                         "'chosen'/'rejected' columns)")
