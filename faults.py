"""Fault-injection points for tests: ``HYRL_FAULT=<point>:<step>`` kills the process (SIGKILL, as the OOM killer
or a preempted node would) when it reaches ``point`` at ``step``. Unset, a point costs one environment lookup.

``HYRL_FAULT_ONCE=<path>`` makes the fault fire in one process only: the first to reach the point creates the file
and dies; a restarted process that reaches the same point again (a rollout worker re-synced to the same weights
version, say) finds the file and goes on. Rollout engines get both variables from the driver (``engine_env``).

Points: ``checkpoint-before-manifest`` (run folder), ``learner-step`` (GRPO learner actor), ``weight-sync`` (a
rollout worker after it received a new weights version and before it loads it).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = ("HYRL_FAULT", "HYRL_FAULT_ONCE")


def fault_point(point: str, step: int) -> None:
    """Die here, now, if the environment asks for it (tests of what a crash at this exact moment leaves behind)."""
    if os.environ.get("HYRL_FAULT") != f"{point}:{step}":
        return
    once = os.environ.get("HYRL_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
