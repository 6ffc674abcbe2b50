"""Synthetic, verifiable task families (one per file), used for training data, rewards and evaluation.

Each family generates examples deterministically from a seed, so train and held-out sets are just different seeds.
"""

from __future__ import annotations

import dataclasses

from hyrl.tasks.arithmetic import Arithmetic
from hyrl.tasks.base import Example, Task, Verdict, is_held_out, split_examples
from hyrl.tasks.files import FileTask, is_task_file
from hyrl.tasks.needle import Needle
from hyrl.tasks.parity import Parity
from hyrl.tasks.reversal import Reversal

# The families models are trained on (the tiny tokenizer is trained on their text), and evaluation-only probes.
TRAINING_TASKS: tuple[Task, ...] = (Arithmetic(), Reversal(), Parity())
TASKS: dict[str, Task] = {t.name: t for t in (*TRAINING_TASKS, Needle())}


def get_task(name: str, **options) -> Task:
    """The registered task family ``name`` with its difficulty options (e.g. ``max_digits=1``), or a user's
    JSONL/Parquet file (``name`` is its path; options: ``template``, ``answer_field``, ``verifier``).

    An unknown name lists the available tasks; an unknown option lists the task's options.
    """
    if is_task_file(name):
        known = {"template", "answer_field", "verifier"}
        bad = sorted(set(options) - known)
        if bad:
            raise KeyError(f"task file {name!r} has no option {', '.join(bad)}; options: {', '.join(sorted(known))}")
        return FileTask(name, **options)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}, or a .jsonl/.parquet file")
    task = TASKS[name]
    known = {f.name for f in dataclasses.fields(task)} - {"name"}
    bad = sorted(set(options) - known)
    if bad:
        raise KeyError(f"task {name!r} has no option {', '.join(bad)}; options: {', '.join(sorted(known))}")
    return dataclasses.replace(task, **options)


def all_task_text(n_per_task: int = 200, seed: int = 0) -> list[str]:
    """Prompt + answer text from every family: the corpus the tiny tokenizer is trained on."""
    return [ex.prompt + ex.answer for task in TRAINING_TASKS for ex in task.make(n_per_task, seed)]


__all__ = [
    "TASKS", "TRAINING_TASKS", "Example", "FileTask", "Task", "Verdict", "all_task_text", "get_task", "is_held_out",
    "split_examples",
]
