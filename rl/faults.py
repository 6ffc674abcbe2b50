"""Fault-injection points for tests: ``HYRL_FAULT=<point>:<step>`` kills the process (SIGKILL, as the OOM killer
or a preempted node would) when it reaches ``point`` at ``step``. Unset, a point costs one environment lookup."""

from __future__ import annotations

import os
import signal


def fault_point(point: str, step: int) -> None:
    """Die here, now, if the environment asks for it (tests of what a crash at this exact moment leaves behind)."""
    if os.environ.get("HYRL_FAULT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
