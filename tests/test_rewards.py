"""Reward functions: each has a pass and a fail example (doctests), the registry finds them, user functions load."""

from __future__ import annotations

import doctest
import importlib

import pytest

from hyrl.rl.rewards import REWARDS, get_reward

MODULES = ["hyrl.rl.rewards.exact", "hyrl.rl.rewards.answer_format", "hyrl.rl.rewards.math_answer"]


@pytest.mark.parametrize("module", MODULES)
def test_reward_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted >= 2 and result.failed == 0


def test_registry_and_import_paths() -> None:
    assert get_reward("exact_match") is REWARDS["exact_match"]
    assert get_reward("hyrl.rl.rewards.answer_format:digits_only")(["p"], ["12"]) == [1.0]
    with pytest.raises(KeyError, match=r"registered: .*exact_match"):
        get_reward("nope")
    with pytest.raises(KeyError, match="cannot be imported"):
        get_reward("no_such_module_xyz:fn")


def test_exact_match_uses_each_samples_task() -> None:
    fn = get_reward("exact_match")
    got = fn(["rev 12=", "par 11=", "1+1="], ["21", "1", "2"], answer=["21", "0", "2"],
             task=["reversal", "parity", "arithmetic"])
    assert got == [1.0, 0.0, 1.0]
