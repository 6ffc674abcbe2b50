"""Reward functions: pure batched functions ``(prompts, completions, **meta) -> list[float]``, registered by name.

One family per file. A recipe names them (``algo.rewards: [exact_match, format]``) or points at a user function by
import path (``my_pkg.rewards:score``). ``meta`` carries per-sample dataset fields such as ``answer`` and ``task``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function available to recipes under ``name``."""

    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or a user function by ``module.path:function``."""
    _load_builtin()
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"reward {name!r} cannot be imported: {e}") from None
        if not callable(fn):
            raise KeyError(f"reward {name!r} is not callable")
        return fn
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))}, or use module:function")
    return REWARDS[name]


def _load_builtin() -> None:
    from hyrl.rl.rewards import answer_format, exact, math_answer  # noqa: F401  (registers on import)
