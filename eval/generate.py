"""Where evaluation completions come from: hyrl's vLLM rollout workers, or (in-loop SFT/DPO) the learner's model.

Both return ``Generations``, grouped per prompt, so the evaluator never knows which one it ran on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generations:
    """``completions[i][j]``: sample j for prompt i (text without special tokens), with its token count."""

    completions: list[list[str]]
    lengths: list[list[int]]
    prompt_tokens: list[int]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return sum(map(sum, self.lengths)) / max(self.seconds, 1e-9)


class Generator(Protocol):
    def __call__(self, prompts: list[str], *, n: int, max_tokens: int, temperature: float,
                 seed: int) -> Generations: ...


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]


class EngineGenerator:
    """Sampling on a ``RolloutWorker`` (in-process) or a ``RolloutPool`` (Ray): the engines rollouts use."""

    def __init__(self, engine, tokenizer: PreTrainedTokenizerBase) -> None:
        self.engine, self.tokenizer = engine, tokenizer

    def __call__(self, prompts: list[str], *, n: int, max_tokens: int, temperature: float,
                 seed: int) -> Generations:
        from hyrl.rollout.batch import Sampling

        ids = _encode(self.tokenizer, prompts)
        t0 = time.perf_counter()
        batch = self.engine.generate(ids, Sampling(max_tokens=max_tokens, temperature=temperature, n=n, seed=seed))
        seconds = time.perf_counter() - t0
        texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        lengths = [len(c) for c in batch.completion_ids]
        return Generations([texts[i * n:(i + 1) * n] for i in range(len(prompts))],
                           [lengths[i * n:(i + 1) * n] for i in range(len(prompts))], [len(x) for x in ids], seconds)


class ModelGenerator:
    """Sampling with ``model.generate`` in this process (in-loop evaluation of SFT/DPO, which have no engine).

    Each prompt's n samples form one unpadded batch; the caller's torch RNG is left as it was, so evaluating
    during training does not change the training run.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def __call__(self, prompts: list[str], *, n: int, max_tokens: int, temperature: float,
                 seed: int) -> Generations:
        ids, device = _encode(self.tokenizer, prompts), next(self.model.parameters()).device
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        completions, lengths = [], []
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for prompt in ids:
                x = torch.tensor([prompt] * n, device=device)
                kwargs = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
                out = self.model.generate(x, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=pad,
                                          **kwargs)[:, len(prompt):].tolist()
                rows = [row[: row.index(eos) + 1] if eos in row else row for row in out]  # EOS counted, as vLLM
                completions.append(self.tokenizer.batch_decode(rows, skip_special_tokens=True))
                lengths.append([len(r) for r in rows])
        self.model.train(was_training)
        return Generations(completions, lengths, [len(x) for x in ids], time.perf_counter() - t0)
