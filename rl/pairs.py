"""On-policy preference pairs: the model answers the training prompts and the task's verifier judges the answers.

For each prompt the model decodes greedily and samples ``num_samples`` more answers. The rejected answer is the
model's own mistake (its greedy answer when that is wrong, else a wrong sample): the answer it would actually
give. The chosen answer is a verified sample, or the reference answer when no sample was right. Prompts the model
never gets wrong give no pair. Pairs built this way push down what the policy really says, which near-miss pairs
made up from the reference answer do not (on the tiny task those lowered held-out accuracy: docs/learning.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hyrl.eval.generate import Generator
from hyrl.tasks import Example, Task
from hyrl.tasks.base import first_token


def on_policy_pairs(generate: Generator, task: Task, examples: list[Example], *, num_samples: int,
                    temperature: float, max_new_tokens: int, seed: int) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` rows for the examples the model gets wrong at least once."""
    prompts = [e.prompt for e in examples]
    greedy = generate(prompts, n=1, max_tokens=max_new_tokens, temperature=0.0, seed=seed).completions
    sampled = generate(prompts, n=num_samples, max_tokens=max_new_tokens, temperature=temperature,
                       seed=seed).completions
    rng = random.Random(seed)
    rows = []
    for ex, (best,), samples in zip(examples, greedy, sampled):
        answers = [first_token(c) for c in (best, *samples)]
        right = [a for a in answers if task.verify(a, ex.answer).score >= 1.0]
        wrong = [a for a in answers if task.verify(a, ex.answer).score < 1.0]
        if not wrong:
            continue
        rejected = answers[0] if answers[0] in wrong else rng.choice(wrong)
        chosen = rng.choice(right) if right else ex.answer
        rows.append({"prompt": ex.prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_pairs(rows: list[dict[str, str]], path: Path) -> None:
    """Keep the pairs in the run folder, so what DPO trained on can be read afterwards."""
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
