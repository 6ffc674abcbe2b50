"""Greedy held-out accuracy with a plain forward loop: works for any causal LM, no engine needed.

For tiny models and quick checks after training; large evaluations go through the vLLM rollout workers.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hyrl.tasks import Example, Task


@torch.no_grad()
def greedy_complete(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 8
) -> str:
    """Decode greedily until EOS or ``max_new_tokens``; returns the completion text without special tokens."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(model(input_ids=ids).logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        new.append(next_id)
        ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def greedy_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
    max_new_tokens: int = 8,
) -> float:
    """Fraction of ``examples`` the model answers exactly (per the task's verifier)."""
    model.eval()
    scores = [
        task.verify(greedy_complete(model, tokenizer, ex.prompt, max_new_tokens), ex.answer).score for ex in examples
    ]
    return sum(scores) / max(1, len(scores))
