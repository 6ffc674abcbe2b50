"""What a rollout hands to the learner, and what it is asked for: plain dataclasses that cross Ray as is.

``logprobs[i][j]`` is the rollout policy's log-probability of ``completion_ids[i][j]`` under the *raw* model
distribution (vLLM ``logprobs_mode="raw_logprobs"``: before temperature / top-p), i.e. the number the learner's
forward produces for the same token, so the two can be compared token by token (``hyrl.rollout.mismatch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one ``generate`` call (kept vLLM-free so the learner side need not import vLLM)."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1  # samples per prompt; the batch holds them prompt-major (prompt 0's n samples first)
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Re-seeds the engine process's torch RNG before sampling (in-process engines), so a step's rollouts depend
    # only on (weights, prompts, seed): what makes a resumed run repeat the uninterrupted one.
    seed: int | None = None


@dataclass
class RolloutBatch:
    """Completions of one request batch, all sampled by the policy of ``policy_version``."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]  # "stop" (EOS / stop token) or "length"
    policy_version: int
    worker_ids: list[int] = field(default_factory=list)  # which worker sampled each sequence

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    @staticmethod
    def concat(parts: list[RolloutBatch]) -> RolloutBatch:
        """Join batches of one policy version, in order."""
        versions = {p.policy_version for p in parts}
        if len(versions) != 1:
            raise ValueError(f"cannot join rollouts of different policy versions {sorted(versions)}")
        return RolloutBatch(
            prompt_ids=[x for p in parts for x in p.prompt_ids],
            completion_ids=[x for p in parts for x in p.completion_ids],
            logprobs=[x for p in parts for x in p.logprobs],
            finish_reasons=[x for p in parts for x in p.finish_reasons],
            policy_version=versions.pop(),
            worker_ids=[x for p in parts for x in p.worker_ids],
        )
