"""Reward functions are user code: a reward that raises, times out, exits, returns NaN or the wrong number of values
is reported with its name, the offending sample and the cause; its batch contributes no gradient, and the run goes
on (or stops after ``algo.reward_max_failures``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from hyrl.rl.reward_process import RewardProcessError


class RewardFailureLimit(RuntimeError):
    """More reward failures than ``algo.reward_max_failures``: the run stops instead of training on bad rewards."""


@dataclass
class RewardFailures:
    """Shared record of reward failures; the trainer zeroes the advantages of a step that has any."""

    failed_steps: set[int] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    max_failures: int | None = None

    def report(self, step: int, message: str) -> None:
        self.failed_steps.add(step)
        self.messages.append(f"step {step}: {message}")
        print(f"hyrl: reward failure at step {step}: {message}", flush=True)
        if self.max_failures is not None and len(self.messages) > self.max_failures:
            raise RewardFailureLimit(f"{len(self.messages)} reward failures, more than algo.reward_max_failures="
                                     f"{self.max_failures}; the last: {self.messages[-1]}")


def _sample(prompts: list, completions: list, i: int) -> str:
    return f"sample {i} (prompt {prompts[i]!r}, completion {completions[i]!r})"


class GuardedReward:
    """A reward function wrapped so that bad output never reaches the loss."""

    def __init__(self, name: str, fn: Callable[..., list[float]], failures: RewardFailures):
        self.__name__ = name
        self.fn, self.failures = fn, failures

    def __call__(self, prompts: list, completions: list, **meta) -> list[float]:
        step = getattr(meta.get("trainer_state"), "global_step", -1)
        n = len(completions)
        try:
            out = [float(x) for x in self.fn(prompts, completions, **meta)]
        except RewardProcessError as e:  # re-running sample by sample would time out or crash again
            self.failures.report(step, f"reward {self.__name__!r} {e} on a batch of {n} completions "
                                       f"(first: {_sample(prompts, completions, 0)})")
            return [0.0] * n
        except Exception as e:
            bad = self._first_raising(prompts, completions, meta)
            where = _sample(prompts, completions, bad) if bad is not None else "the batch"
            self.failures.report(step, f"reward {self.__name__!r} raised {type(e).__name__}: {e} on {where}")
            return [0.0] * n
        if len(out) != n:
            self.failures.report(step, f"reward {self.__name__!r} returned {len(out)} values for {n} completions")
            return [0.0] * n
        bad = next((i for i, x in enumerate(out) if not math.isfinite(x)), None)
        if bad is not None:
            self.failures.report(step, f"reward {self.__name__!r} returned {out[bad]} on "
                                       f"{_sample(prompts, completions, bad)}")
            return [0.0] * n
        return out

    def _first_raising(self, prompts: list, completions: list, meta: dict) -> int | None:
        """Re-run sample by sample to name the first one that raises."""
        for i in range(len(completions)):
            n = len(completions)
            one = {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in meta.items()}
            try:
                self.fn(prompts[i : i + 1], completions[i : i + 1], **one)
            except Exception:
                return i
        return None
