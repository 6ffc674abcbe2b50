"""User rewards in their own process: a reward that hangs, exits, crashes or raises is named with its cause within
the timeout, the learner process survives, the batch gets no reward signal, and the next call works again."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hyrl.rl.guard import GuardedReward, RewardFailureLimit, RewardFailures
from hyrl.rl.reward_process import RewardProcess, RewardProcessError

USER_REWARDS = '''
import os, time

def slow(prompts, completions, **meta):
    if any("sleep" in c for c in completions):
        time.sleep(60)
    return [1.0] * len(completions)

def exits(prompts, completions, **meta):
    if any("exit" in c for c in completions):
        os._exit(3)
    return [float(len(c)) for c in completions]

def raises(prompts, completions, **meta):
    if any("bad" in c for c in completions):
        raise ValueError("cannot parse")
    return [0.5] * len(completions)

def step_of(prompts, completions, trainer_state=None, **meta):
    return [float(trainer_state.global_step)] * len(completions)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_rewards_mod.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards_mod"
    sys.modules.pop("user_rewards_mod", None)


def test_a_hanging_reward_times_out_and_the_process_is_replaced(user_module: str) -> None:
    reward = RewardProcess(f"{user_module}:slow", timeout_s=3.0)
    try:
        assert reward(["p"], ["ok"]) == [1.0]
        t0 = time.monotonic()
        with pytest.raises(RewardProcessError, match=r"timed out after 3 s \(algo.reward_timeout_s\)"):
            reward(["p"], ["sleep"])
        assert time.monotonic() - t0 < 30, "the timeout did not stop the wait"
        assert reward(["p", "q"], ["ok", "fine"]) == [1.0, 1.0], "a new process must serve the next call"
    finally:
        reward.close()


def test_an_exiting_reward_is_named_with_its_exit_code(user_module: str) -> None:
    reward = RewardProcess(f"{user_module}:exits", timeout_s=30.0)
    try:
        with pytest.raises(RewardProcessError, match="exited with code 3"):
            reward(["p"], ["exit now"])
        assert reward(["p"], ["abc"]) == [3.0]
    finally:
        reward.close()


def test_guarded_reward_reports_name_sample_and_cause_and_zeroes_the_batch(user_module: str) -> None:
    from transformers import TrainerState

    failures = RewardFailures()
    state = TrainerState(global_step=7)
    procs = {name: RewardProcess(f"{user_module}:{name}", timeout_s=3.0) for name in ("slow", "exits", "raises")}
    try:
        guarded = {name: GuardedReward(name, p, failures) for name, p in procs.items()}
        assert guarded["slow"](["a", "b"], ["ok", "sleep"], trainer_state=state) == [0.0, 0.0]
        assert guarded["exits"](["a"], ["exit"], trainer_state=state) == [0.0]
        assert guarded["raises"](["a", "b"], ["fine", "bad one"], trainer_state=state) == [0.0, 0.0]
        assert failures.failed_steps == {7}
        slow, exits, raises = failures.messages
        assert "reward 'slow' timed out after 3 s" in slow and "'a'" in slow
        assert "reward 'exits' its process exited with code 3" in exits
        assert "reward 'raises' raised ValueError: cannot parse on sample 1 (prompt 'b', completion 'bad one')" \
            in raises
        # the trainer's state crosses the process boundary
        step_of = RewardProcess(f"{user_module}:step_of", timeout_s=30.0)
        assert step_of(["a"], ["x"], trainer_state=state) == [7.0]
        step_of.close()
    finally:
        for p in procs.values():
            p.close()


def test_failures_past_the_limit_stop_the_run() -> None:
    failures = RewardFailures(max_failures=1)
    failures.report(1, "first")
    with pytest.raises(RewardFailureLimit, match=r"more than algo\.reward_max_failures=1; the last: step 2: second"):
        failures.report(2, "second")


def test_an_unimportable_reward_fails_validation(tmp_path: Path) -> None:
    from hyrl.config import check_paths, load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "grpo_tiny.yaml",
                         overrides=["algo.rewards=[exact_match,no_such_module:score]"], paths=False)
    problems = check_paths(recipe)
    assert any(p.startswith("algo.rewards[1]: reward 'no_such_module:score' cannot be imported") for p in problems), \
        problems
