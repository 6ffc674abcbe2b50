"""TRL's ``rollout_func`` for hyrl: keep the rollout pool on the learner's weights, then sample the prompts.

Synchronous (``max_staleness == 0``): at learner step s the pool is synced to version s and samples step s's
prompts, so rollouts are exactly on-policy.

Asynchronous (``max_staleness >= 1``): while the learner trains on step s, the pool already samples step s+1's
prompts with version s. Prompt order is known in advance (the dataset is not reshuffled), and a prefetched batch is
used only if its prompts are the ones TRL asks for and its policy version is within the bound; otherwise step s is
sampled synchronously. The pool is never used by two threads at once: the prefetch is collected before weights
are pushed and the next prefetch is started.

Several learner workers (data-parallel): rank 0 gathers every rank's prompts (in rank order: the global batch),
samples them in one pool request and scatters each rank its completions, so the rollouts are those a single learner
with the same global batch would get. Rank 0 pushes the weights; sharded (FSDP2) weights are gathered by all ranks.

Colocated (learner and rollout sharing GPUs): the engines are woken for the weight push and the rollout, and put to
sleep (weights offloaded, KV cache freed) before the learner step.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from transformers import PreTrainedTokenizerBase

from hyrl.rollout.batch import RolloutBatch, Sampling


class PoolRollout:
    def __init__(self, pool, tokenizer: PreTrainedTokenizerBase, sampling: Sampling, *, max_staleness: int = 0,
                 upcoming: Callable[[int], list[str]] | None = None, colocated: bool = False):
        self.pool, self.tokenizer, self.sampling = pool, tokenizer, sampling
        self.max_staleness, self.upcoming, self.colocated = max_staleness, upcoming, colocated
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if max_staleness else None
        self._prefetch: tuple[int, list[str], Future] | None = None

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        from hyrl.rl.learners import rank_and_world

        rank, world = rank_and_world()
        if world == 1:
            return self._serve(list(prompts), trainer)
        import torch.distributed as dist

        gathered: list[list[str]] | None = [[] for _ in range(world)] if rank == 0 else None
        dist.gather_object(list(prompts), gathered, dst=0)
        parts: list[dict | None] = [None] * world
        if rank == 0:
            out = self._serve([p for part in gathered for p in part], trainer)
            bounds = [0, *itertools.accumulate(len(part) for part in gathered)]
            parts = [{k: v[a:b] for k, v in out.items()} for a, b in itertools.pairwise(bounds)]
        else:
            self.sync(trainer)  # a no-op here unless the weights are sharded (then rank 0 waits for this rank)
        mine: list[dict | None] = [None]
        dist.scatter_object_list(mine, parts if rank == 0 else None, src=0)
        return mine[0]

    def _serve(self, prompts: list[str], trainer) -> dict[str, list]:
        """Rank 0 (or the only learner): bring the pool to the learner's weights and sample ``prompts``."""
        step = trainer.state.global_step
        t0 = time.perf_counter()
        batch = self._take_prefetched(step, prompts)
        self.sync(trainer)
        if batch is None:
            batch = self._generate(prompts, step)
        if self.colocated:
            self.pool.sleep()
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
        """Push the learner's weights if it has stepped since the last push (policy version = learner step).

        Every rank calls this at the same points; rank 0 pushes. The pool takes the weights as an iterator, in
        buckets, so the learner never holds more than one bucket of extra (gathered or host) copies.
        """
        from hyrl.rl.learners import full_named_tensors, is_sharded, rank_and_world

        step, (rank, _) = trainer.state.global_step, rank_and_world()
        if rank == 0 and self.colocated:  # whoever samples next (rollout, evaluation) needs the engines awake
            self.pool.wake_up()
        sharded = is_sharded(trainer.model)
        if rank != 0 and not sharded:
            return
        due = rank == 0 and step != self.pool.version
        if sharded:  # every rank must take part in each gather, so rank 0 tells the others whether one is due
            import torch
            import torch.distributed as dist

            flag = torch.tensor([int(due)], device=next(trainer.model.parameters()).device)
            dist.broadcast(flag, src=0)
            due = bool(flag.item())
        if not due:
            return
        t0 = time.perf_counter()
        named = full_named_tensors(trainer.model)
        if rank != 0:
            for _ in named:  # take part in the gathers; rank 0 sends
                pass
            return
        self.pool.update_weights(named, version=step)
        trainer.add_metrics({"sync/seconds": time.perf_counter() - t0})

    def settle(self) -> None:
        """Wait for an outstanding prefetch (keeping its batch), so a caller can use the pool alone: the pool is not
        meant for two threads at once, and evaluations run between steps while the next step's rollouts may be
        sampling."""
        if self._prefetch is not None:
            self._prefetch[2].result()

    def close(self) -> None:
        """Wait for an outstanding prefetch so nothing else uses the pool concurrently."""
        if self._prefetch is not None:
            self._prefetch[2].result()
            self._prefetch = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
