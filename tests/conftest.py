"""Shared test set-up: one thread per process, deterministic seeds, and the GPU skip marker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)
# Without a GPU, Triton kernels run in its interpreter; set before anything imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


EPS32 = float(torch.finfo(torch.float32).eps)
# The rollout engine (paged state, chunked prefill, other kernels) rounds differently from the learner's forward;
# both are fp32 computations of the same function, so their errors are of the same order. 32x the learner's own
# worst error leaves room for that without admitting a real discrepancy (a stale weight or a wrong temperature
# moves log-probs by 1e-3 and more).
ROLLOUT_ROUNDING_FACTOR = 32


def fp32_rounding(model, prompt_ids, completion_ids, temperature: float = 1.0) -> float:
    """This machine's fp32 rounding of the learner's log-probs on these sequences: max |fp32 - float64| against a
    float64 copy of the same model (hyrl computes in at least fp32, so that copy is a true oracle). Tests derive
    their rollout-vs-learner bounds from it instead of from a constant one CPU printed."""
    import copy

    from hyrl.rollout.mismatch import learner_logprobs, mismatch

    oracle = learner_logprobs(copy.deepcopy(model).double(), prompt_ids, completion_ids, temperature)
    ours = learner_logprobs(model, prompt_ids, completion_ids, temperature)
    return max(mismatch(ours, oracle).max_abs_delta, EPS32)


@pytest.fixture(scope="session")
def rollout_bound():
    """``rollout_bound(model, prompt_ids, completion_ids, temperature)``: the largest rollout-vs-learner
    |delta log-prob| on these sequences that is still fp32 rounding: ROLLOUT_ROUNDING_FACTOR x ``fp32_rounding``."""
    return lambda *args, **kwargs: ROLLOUT_ROUNDING_FACTOR * fp32_rounding(*args, **kwargs)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """One tiny random-init Olmo Hybrid + tokenizer folder for the whole session (built locally, ~1 s)."""
    from hyrl.model.presets import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), preset="tiny", seed=0)


# --- rollout (hyrl.rollout): one in-process vLLM engine and one Ray cluster per session, shared by all tests ---


@pytest.fixture(scope="session")
def rollout_run_dir(tmp_path_factory: pytest.TempPathFactory):
    """Run folder of the session's engines (vLLM compile cache, Ray temp files)."""
    return tmp_path_factory.mktemp("rollout_run")


@pytest.fixture(scope="session")
def vllm_worker(tiny_model_dir, rollout_run_dir):
    """An in-process ``RolloutWorker`` (vLLM + hyrl plugin) on the tiny model; 64-token steps force chunked prefill.

    Tests that change its weights must put the checkpoint back (``update_weights(tiny_model_dir)``).
    """
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.worker import RolloutWorker

    cfg = EngineConfig(model=str(tiny_model_dir), run_dir=str(rollout_run_dir), max_num_batched_tokens=64,
                       max_num_seqs=16)
    return RolloutWorker(cfg)


@pytest.fixture(scope="session")
def ray_cluster(rollout_run_dir):
    """A local 2-CPU Ray cluster for the session (files under the session's run folder)."""
    import shutil

    import ray

    from hyrl.rollout.pool import init_ray

    temp = init_ray(rollout_run_dir)
    yield
    ray.shutdown()
    if not temp.is_relative_to(rollout_run_dir):  # a short /tmp folder for Ray's sockets (see init_ray)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def rollout_pool(ray_cluster, tiny_model_dir, rollout_run_dir):
    """Two ``RolloutWorker`` Ray actors on the tiny model behind a ``RolloutPool``."""
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.pool import PoolConfig, RolloutPool

    cfg = EngineConfig(model=str(tiny_model_dir), run_dir=str(rollout_run_dir), max_num_batched_tokens=64,
                       max_num_seqs=16)
    pool = RolloutPool(cfg, PoolConfig(num_workers=2, num_cpus_per_worker=0.5))  # leaves Ray CPUs for other actors
    yield pool
    pool.shutdown()


# --- training runs through the real CLI, shared by the tests that need a trained checkpoint ---

ROOT = Path(__file__).resolve().parents[1]


def _train_cmd(recipe: str, run_dir: Path, overrides) -> list[str]:
    return [sys.executable, "-m", "hyrl.cli", "train", str(ROOT / "recipes" / recipe), f"logging.run_dir={run_dir}",
            "logging.progress=false", *overrides]


def train_recipe(recipe: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``hyrl train recipes/<recipe> logging.run_dir=<run_dir> ...`` in a child process; fails the test on error."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(_train_cmd(recipe, run_dir, overrides), capture_output=True, text=True, cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_recipes_together(recipe: str, runs: dict[Path, list[str]], parallel: int = 2) -> None:
    """Run ``recipe`` once per ``{run_dir: overrides}``, ``parallel`` at a time, each with its own local Ray cluster.

    A synchronous GRPO-style step keeps about one core busy (rollout, then learner), so two runs on 2 cores take
    ~1.15x one run's time instead of 2x (measured with grpo_tiny: 2.1 s per step side by side, 1.85 s alone)."""
    running = []

    def finish(run_dir: Path, proc: subprocess.Popen, log: Path) -> None:
        assert proc.wait(timeout=1800) == 0, (run_dir, log.read_text()[-4000:])

    for run_dir, overrides in runs.items():
        if len(running) == parallel:
            finish(*running.pop(0))
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run_dir.parent / f"{run_dir.name}.log"  # a file, not a pipe: an unread full pipe would stall a run
        with open(log, "w") as f:
            proc = subprocess.Popen(_train_cmd(recipe, run_dir, overrides), cwd=run_dir.parent, stdout=f,
                                    stderr=subprocess.STDOUT)
        running.append((run_dir, proc, log))
    for item in running:
        finish(*item)


@pytest.fixture(scope="session")
def train():
    """``train(recipe, run_dir, *overrides)``: a recipe run through the real CLI (see ``train_recipe``)."""
    return train_recipe


@pytest.fixture(scope="session")
def train_together():
    """``train_together(recipe, {run_dir: overrides}, parallel=2)`` (see ``train_recipes_together``)."""
    return train_recipes_together


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default SFT recipe trained once per session (~1 min): ``init/`` is its untrained start, ``final/`` the
    result."""
    run_dir = tmp_path_factory.mktemp("train") / "sft"
    train_recipe("sft_tiny.yaml", run_dir)
    return run_dir
