"""GRPO building blocks without an engine: mismatch correction weights, the parity gate, guarded rewards."""

from __future__ import annotations

import math

import pytest
import torch

from hyrl.config import IcePopCorrection, NoCorrection, ParityGate, TISCorrection
from hyrl.rl.correction import importance_weights, mismatch_stats
from hyrl.rl.grpo import upcoming_prompts
from hyrl.rl.grpo_trainer import ParityGateError, ParityMonitor
from hyrl.rl.guard import GuardedReward, RewardFailures


def _logps():
    rollout = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    learner = torch.log(torch.tensor([[0.5, 1.0, 0.2, 0.9]]))  # ratios 1, 2, 0.4, 1.8
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    return learner, rollout, mask


def test_tis_truncates_ratio_at_cap() -> None:
    w = importance_weights(*_logps(), TISCorrection(cap=1.5))
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.5, 0.4, 0.0]]))


def test_icepop_drops_tokens_outside_band() -> None:
    w = importance_weights(*_logps(), IcePopCorrection(low=0.5, high=1.5))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_no_correction_is_the_mask_and_nan_rollout_scores_count_as_one() -> None:
    learner, rollout, mask = _logps()
    rollout[0, 1] = float("nan")
    torch.testing.assert_close(importance_weights(learner, rollout, mask, NoCorrection()), mask)
    torch.testing.assert_close(importance_weights(learner, rollout, mask, TISCorrection(cap=9.0))[0, 1],
                               torch.tensor(1.0))


def test_mismatch_stats() -> None:
    learner, rollout, mask = _logps()
    same = mismatch_stats(rollout, rollout, mask)
    assert same["mismatch/kl"] == 0.0 and same["mismatch/max_abs_logprob_diff"] == 0.0
    diff = mismatch_stats(learner, rollout, mask)
    assert diff["mismatch/max_abs_logprob_diff"] == pytest.approx(math.log(2.5), rel=1e-5)  # |log 0.4|
    assert diff["mismatch/kl"] > 0


def test_parity_gate_trips_only_after_patience_consecutive_steps() -> None:
    monitor = ParityMonitor(ParityGate(max_kl=0.01, patience=3))
    for step, kl in enumerate([0.5, 0.5, 0.0, 0.5, 0.5]):
        monitor.observe(step, kl)  # a good step in between resets the run
    with pytest.raises(ParityGateError, match=r"above 0\.01 for 3 steps"):
        monitor.observe(5, 0.2)


def _reward(prompts, completions, **_):
    return [1.0 if c == "ok" else 0.0 for c in completions]


def _raises_on_boom(prompts, completions, **_):
    return [1 / 0 if c == "boom" else 1.0 for c in completions]


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (_raises_on_boom, "raised ZeroDivisionError: division by zero on sample 1 (prompt 'p1', completion 'boom')"),
        (lambda p, c, **_: [float("nan")] * len(c), "returned nan on sample 0 (prompt 'p0', completion 'ok')"),
        (lambda p, c, **_: [1.0], "returned 1 values for 3 completions"),
    ],
)
def test_bad_reward_is_reported_by_name_and_sample(fn, expected: str) -> None:
    failures = RewardFailures()
    guarded = GuardedReward("my_reward", fn, failures)
    out = guarded(["p0", "p1", "p2"], ["ok", "boom", "ok"], trainer_state=type("S", (), {"global_step": 7})())
    assert out == [0.0, 0.0, 0.0]
    assert failures.failed_steps == {7}
    assert "'my_reward'" in failures.messages[0] and expected in failures.messages[0]


def test_good_reward_passes_through() -> None:
    failures = RewardFailures()
    assert GuardedReward("r", _reward, failures)(["a", "b"], ["ok", "no"]) == [1.0, 0.0]
    assert not failures.failed_steps


def test_upcoming_prompts_follow_trl_unshuffled_order() -> None:
    at = upcoming_prompts(list("abcdefg"), per_step=3, repeats=2)
    assert at(0) == list("aabbcc") and at(1) == list("ddeeff") and at(2) == list("aabbcc")
