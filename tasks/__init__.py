"""Synthetic, verifiable task families (one per file), used for training data, rewards and evaluation.

Each family generates examples deterministically from a seed, so train and held-out sets are just different seeds.
"""

from __future__ import annotations

from hyrl.tasks.arithmetic import Arithmetic
from hyrl.tasks.base import Example, Task, Verdict
from hyrl.tasks.parity import Parity
from hyrl.tasks.reversal import Reversal

TASKS: dict[str, Task] = {t.name: t for t in (Arithmetic(), Reversal(), Parity())}


def get_task(name: str) -> Task:
    """The registered task family ``name``; an unknown name lists the available ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def all_task_text(n_per_task: int = 200, seed: int = 0) -> list[str]:
    """Prompt + answer text from every family: the corpus the tiny tokenizer is trained on."""
    return [ex.prompt + ex.answer for task in TASKS.values() for ex in task.make(n_per_task, seed)]


__all__ = ["TASKS", "Example", "Task", "Verdict", "all_task_text", "get_task"]
