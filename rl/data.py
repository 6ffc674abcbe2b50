"""Training data as ``datasets.Dataset``s built from a task family (or a user's JSONL file)."""

from __future__ import annotations

import json
import random

from datasets import Dataset

from hyrl.config import DataConfig
from hyrl.tasks import Example, get_task, split_examples


def load_examples(data: DataConfig, split: str) -> list[Example]:
    """Train or held-out examples: the task's examples of that split (disjoint by prompt, see ``split_examples``)
    drawn with the split's seed, or rows of ``data.path``."""
    n, seed = (data.num_train, data.train_seed) if split == "train" else (data.num_eval, data.eval_seed)
    if data.path is None:
        return split_examples(get_task(data.task, **data.task_options), n, seed, split)
    rows = [json.loads(line) for line in data.path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        if "prompt" not in row or "answer" not in row:
            raise ValueError(f"{data.path}: row {i} lacks 'prompt' or 'answer' (fix: both fields in every row)")
    cut = max(1, len(rows) - data.num_eval)
    picked = rows[:cut][:n] if split == "train" else rows[cut:][:n]
    return [Example(prompt=r["prompt"], answer=str(r["answer"])) for r in picked]


def sft_dataset(data: DataConfig) -> Dataset:
    """Prompt/completion pairs; TRL masks the prompt and appends EOS to the completion. The completion is the
    example's demonstration where the task has one (a teacher's answer, possibly wrong), else its answer."""
    rows = [{"prompt": ex.prompt, "completion": ex.meta.get("demonstration", ex.answer)}
            for ex in load_examples(data, "train")]
    return Dataset.from_list(rows)


def dpo_dataset(data: DataConfig, seed: int = 0) -> Dataset:
    """Preference pairs: the correct answer is chosen, a near-miss wrong answer is rejected."""
    task, rng = get_task(data.task, **data.task_options), random.Random(seed)
    rows = [
        {"prompt": ex.prompt, "chosen": ex.answer, "rejected": task.wrong_answer(ex, rng)}
        for ex in load_examples(data, "train")
    ]
    return Dataset.from_list(rows)
