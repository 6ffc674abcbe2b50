"""Synthetic, verifiable task families (one per file), used for training data, rewards and evaluation.

Each family generates examples deterministically from a seed, so train and held-out sets are just different seeds.
"""

from __future__ import annotations

import dataclasses

from hyrl.tasks.arithmetic import Arithmetic
from hyrl.tasks.base import Example, Task, Verdict
from hyrl.tasks.parity import Parity
from hyrl.tasks.reversal import Reversal

TASKS: dict[str, Task] = {t.name: t for t in (Arithmetic(), Reversal(), Parity())}


def get_task(name: str, **options: int) -> Task:
    """The registered task family ``name`` with its difficulty options (e.g. ``max_digits=1``).

    An unknown name lists the available tasks; an unknown option lists the task's options.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    task = TASKS[name]
    known = {f.name for f in dataclasses.fields(task)} - {"name"}
    bad = sorted(set(options) - known)
    if bad:
        raise KeyError(f"task {name!r} has no option {', '.join(bad)}; options: {', '.join(sorted(known))}")
    return dataclasses.replace(task, **options)


def all_task_text(n_per_task: int = 200, seed: int = 0) -> list[str]:
    """Prompt + answer text from every family: the corpus the tiny tokenizer is trained on."""
    return [ex.prompt + ex.answer for task in TASKS.values() for ex in task.make(n_per_task, seed)]


__all__ = ["TASKS", "Example", "Task", "Verdict", "all_task_text", "get_task"]
