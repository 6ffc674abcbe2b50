"""TRL's ``rollout_func`` for hyrl: keep the rollout pool on the learner's weights, then sample the prompts.

Synchronous (``max_staleness == 0``): at learner step s the pool is synced to version s and samples step s's
prompts, so rollouts are exactly on-policy.

Asynchronous (``max_staleness >= 1``): while the learner trains on step s, the pool already samples step s+1's
prompts with version s. Prompt order is known in advance (the dataset is not reshuffled), and a prefetched batch is
used only if its prompts are the ones TRL asks for and its policy version is within the bound; otherwise step s is
sampled synchronously. The pool is never used by two threads at once: the prefetch is collected before weights
are pushed and the next prefetch is started.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from transformers import PreTrainedTokenizerBase

from hyrl.rollout.batch import RolloutBatch, Sampling


class PoolRollout:
    def __init__(self, pool, tokenizer: PreTrainedTokenizerBase, sampling: Sampling, *, max_staleness: int = 0,
                 upcoming: Callable[[int], list[str]] | None = None):
        self.pool, self.tokenizer, self.sampling = pool, tokenizer, sampling
        self.max_staleness, self.upcoming = max_staleness, upcoming
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if max_staleness else None
        self._prefetch: tuple[int, list[str], Future] | None = None

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        step = trainer.state.global_step
        t0 = time.perf_counter()
        batch = self._take_prefetched(step, prompts)
        self.sync(trainer)
        if batch is None:
            batch = self._generate(prompts, step)
        if self._executor is not None and self.upcoming is not None:
            nxt = self.upcoming(step + 1)
            self._prefetch = (step + 1, nxt, self._executor.submit(self._generate, nxt, step + 1))
        seconds = time.perf_counter() - t0
        trainer.add_metrics({
            "rollout/wait_seconds": seconds, "rollout/tokens_per_s": batch.num_tokens / max(seconds, 1e-9),
            "rollout/policy_version": batch.policy_version, "rollout/staleness": step - batch.policy_version,
        })
        return {"prompt_ids": batch.prompt_ids, "completion_ids": batch.completion_ids, "logprobs": batch.logprobs}

    def _generate(self, prompts: list[str], step: int) -> RolloutBatch:
        """Sample ``prompts`` for learner step ``step``; the sampling seed is a function of the step alone."""
        ids = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        seed = None if self.sampling.seed is None else self.sampling.seed * 1_000_003 + step
        return self.pool.generate(ids, dataclasses.replace(self.sampling, seed=seed))

    def _take_prefetched(self, step: int, prompts: list[str]) -> RolloutBatch | None:
        """The prefetched batch for ``step`` if its prompts match and it is fresh enough; else None."""
        if self._prefetch is None:
            return None
        for_step, for_prompts, future = self._prefetch
        self._prefetch = None
        batch = future.result()
        if for_step != step or for_prompts != list(prompts) or step - batch.policy_version > self.max_staleness:
            return None
        return batch

    def sync(self, trainer) -> None:
        """Push the learner's weights if it has stepped since the last push (policy version = learner step)."""
        step = trainer.state.global_step
        if step == self.pool.version:
            return
        t0 = time.perf_counter()
        self.pool.update_weights([(k, v.detach()) for k, v in trainer.model.state_dict().items()], version=step)
        trainer.add_metrics({"sync/seconds": time.perf_counter() - t0})

    def close(self) -> None:
        """Wait for an outstanding prefetch so nothing else uses the pool concurrently."""
        if self._prefetch is not None:
            self._prefetch[2].result()
            self._prefetch = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
