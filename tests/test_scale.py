"""Scale-out: several learner workers (data-parallel, gloo) and rollout workers, on a local or an existing cluster.

The data-parallel run must be the single-learner run with the same global batch, split: after one step both
learners hold identical weights, equal to the single learner's within fp32 rounding, and every rollout worker
serves them. The two-learner run joins an already running Ray cluster through ``ray.address``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

from hyrl.config import RecipeError, load_recipe
from hyrl.rollout.batch import Sampling

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
ONE_STEP = ("optim.max_steps=1", "algo.warm_start=null", "eval.every_n_steps=0", "checkpoint.every_n_steps=0",
            "rollout.num_workers=2", "rollout.enforce_eager=true", "optim.lr=1e-2", "optim.warmup_steps=0")

HEAD = """
import os, signal, sys, time
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray
info = ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 << 20, _temp_dir=sys.argv[1],
                log_to_driver=False)
print(info.address_info["gcs_address"], flush=True)
signal.signal(signal.SIGTERM, lambda *_: (ray.shutdown(), sys.exit(0)))
while True:
    time.sleep(1)
"""


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.fixture
def ray_head():
    """A Ray cluster started by another process, as a user's cluster would be; its GCS address."""
    temp = tempfile.mkdtemp(prefix="hyrl_head_", dir="/tmp")
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        yield head.stdout.readline().strip()
    finally:
        head.terminate()
        head.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
def test_two_learners_equal_one_learner_with_the_same_global_batch(train, sft_run, tmp_path, ray_head) -> None:
    """From the SFT model (non-zero rewards, so the step has a gradient), one GRPO step with 2 vs 1 learners."""
    assert ray_head.count(":") == 1, f"head did not report its address: {ray_head!r}"
    two, one = tmp_path / "two", tmp_path / "one"
    start = f"model.path={sft_run / 'final'}"
    train("grpo_tiny.yaml", two, *ONE_STEP, start, "learner.num_workers=2", f"ray.address={ray_head}")
    train("grpo_tiny.yaml", one, *ONE_STEP, start, "learner.num_workers=1")

    workers = json.loads((two / "workers.json").read_text())
    learners = [w["weights_checksum"] for w in workers["learners"]]
    assert len(learners) == 2 and learners[0] == learners[1], "the learner workers' weights diverged"
    assert workers["policy_version"] == 1
    assert [h["version"] for h in workers["rollout"]] == [1, 1]
    assert {h["checksum"] for h in workers["rollout"]} == {learners[0]}, "rollout workers serve other weights"

    # The gradients agree to fp32 rounding (the all-reduce sums in another order): compare the logged norms. Adam's
    # first step is ~lr * g / (|g| + eps), which turns rounding-level differences of near-zero gradient entries
    # into visible ones, so the weights are compared as a whole (relative norm) and element-wise for nearly all.
    logs = {run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (two, one)}
    norms = {run: next(r["grad_norm"] for r in log if "grad_norm" in r) for run, log in logs.items()}
    assert abs(norms[two] - norms[one]) <= 1e-5 * norms[one], norms
    a, b, init = _weights(two / "final"), _weights(one / "final"), _weights(sft_run / "final")
    assert a.keys() == b.keys()
    step_two = torch.cat([(a[k] - init[k]).flatten() for k in sorted(a)])
    step_one = torch.cat([(b[k] - init[k]).flatten() for k in sorted(a)])
    assert step_one.abs().max() > 1e-3, "the step did not change the weights, so the comparison says nothing"
    relative = ((step_two - step_one).norm() / step_one.norm()).item()
    off = ((step_two - step_one).abs() > 1e-6).float().mean().item()
    assert relative <= 1e-3 and off <= 1e-3, f"2 learners' step differs from 1 learner's: rel {relative:.3g}, " \
                                              f"{off:.3%} of weights off by > 1e-6"


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_stuck_worker_times_out_and_is_replaced(rollout_pool) -> None:
    """SIGSTOP worker 0 while it samples: after ``request_timeout_s`` its chunk is served by worker 1, worker 0 is
    killed and restarted by Ray, and the pool serves from both again."""
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 300, (20,), generator=g).tolist() for _ in range(16)]
    sampling = Sampling(max_tokens=300, ignore_eos=True, seed=1)
    t0 = time.monotonic()
    rollout_pool.generate(prompts, sampling)  # how long a healthy request takes here (both chunks in parallel)
    healthy = time.monotonic() - t0
    victim = rollout_pool.health()[0]["pid"]
    retries, timeout = rollout_pool.retries, rollout_pool.cfg.request_timeout_s
    rollout_pool.cfg.request_timeout_s = 2 * healthy + 2
    threading.Thread(target=lambda: (time.sleep(healthy / 4), os.kill(victim, signal.SIGSTOP))).start()
    try:
        t0 = time.monotonic()
        batch = rollout_pool.generate(prompts, sampling)
        elapsed = time.monotonic() - t0
    finally:
        rollout_pool.cfg.request_timeout_s = timeout
    assert rollout_pool.retries == retries + 1, f"worker 0 was not timed out (took {elapsed:.1f} s)"
    assert len(batch) == 16 and batch.num_tokens == 16 * 300
    assert set(batch.worker_ids) == {1}, "the stuck worker's chunk must be served by the other worker"
    assert elapsed < 4 * healthy + 10, f"{elapsed:.1f} s for a request that takes {healthy:.1f} s when healthy"
    health = rollout_pool.wait_ready()
    assert health[0]["ok"] and health[0]["pid"] != victim
    again = rollout_pool.generate(prompts, Sampling(max_tokens=8, ignore_eos=True))
    assert set(again.worker_ids) == {0, 1}


@pytest.mark.vllm
@pytest.mark.ray
def test_chunks_are_seeded_by_position_not_by_worker(rollout_pool) -> None:
    """One prompt per chunk, the same prompt everywhere: every chunk samples differently (its own seed), and chunk i
    gives the same sample whichever worker serves it (each chunk re-run by hand on each worker)."""
    import ray

    from hyrl.rollout.pool import _chunk_sampling

    prompts = [[11, 12, 13, 14]] * 4
    sampling = Sampling(max_tokens=12, seed=5)
    size = rollout_pool.cfg.chunk_size
    try:
        rollout_pool.cfg.chunk_size = 1
        assert rollout_pool.chunks(4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
        batch = rollout_pool.generate(prompts, sampling)
    finally:
        rollout_pool.cfg.chunk_size = size
    assert len({tuple(c) for c in batch.completion_ids}) > 1, "chunks of the same prompt sampled the same tokens"
    for i in range(4):
        for worker in rollout_pool.workers:
            again = ray.get(worker.generate.remote(prompts[i:i + 1], _chunk_sampling(sampling, i)))
            assert again.completion_ids == batch.completion_ids[i:i + 1], (i, again.worker_ids)


def _recipe(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_recipe(path)


@pytest.mark.parametrize("extra, message", [
    ("ray: {placement: colocate}\nlearner: {num_workers: 2}\nrollout: {num_workers: 2}",
     "colocate .* unavailable on CPU"),
    ("learner: {num_workers: 3}", "must split evenly over 3 learner workers"),
    ("learner: {sharding: fsdp2}", "fsdp2 .* on CPU use sharding: ddp"),
    ("ray: {placement: colocate}\nlearner: {num_workers: 2, num_gpus_per_worker: 0.5}\n"
     "rollout: {num_workers: 1, num_gpus_per_worker: 0.5}", "must equal learner.num_workers"),
])
def test_bad_placements_are_refused_by_name(tmp_path, extra: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, f"name: x\nalgo: {{type: grpo}}\n{extra}\n")


@pytest.mark.parametrize("name", ["grpo_2xh200.yaml", "grpo_8gpu.yaml"])
def test_gpu_recipes_validate(name: str) -> None:
    from pathlib import Path

    from hyrl.rl.cluster import bundles

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    gpus = sum(b.get("GPU", 0) for b in bundles(recipe))
    assert gpus == {"grpo_2xh200.yaml": 2, "grpo_8gpu.yaml": 8}[name]
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "validate", str(Path("recipes") / name)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.vllm
def test_colocated_sleep_is_refused_plainly_on_cpu(vllm_worker) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU sleep works; see test_colocated_sleep_frees_gpu_memory")
    with pytest.raises(RuntimeError, match="needs GPUs: vLLM's sleep mode frees GPU memory and is unavailable on CPU"):
        vllm_worker.sleep()
    assert vllm_worker.generate([[5, 6, 7]], Sampling(max_tokens=4, ignore_eos=True)).num_tokens == 4


@requires_gpu
@pytest.mark.vllm
def test_colocated_sleep_frees_gpu_memory(tiny_model_dir, tmp_path) -> None:
    """A colocated engine gives its GPU memory back during the learner step and samples the same after waking."""
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.worker import RolloutWorker

    worker = RolloutWorker(EngineConfig(model=str(tiny_model_dir), run_dir=str(tmp_path), gpu_memory_utilization=0.3,
                                        extra={"enable_sleep_mode": True}))
    sampling = Sampling(max_tokens=8, ignore_eos=True, temperature=0.0)
    before = worker.generate([[5, 6, 7]], sampling)
    free_awake = torch.cuda.mem_get_info()[0]
    worker.sleep()
    freed = torch.cuda.mem_get_info()[0] - free_awake
    worker.wake_up()
    after = worker.generate([[5, 6, 7]], sampling)
    assert freed > 0.2 * torch.cuda.mem_get_info()[1] * 0.3, f"sleep freed only {freed / 2**20:.0f} MiB"
    assert after.completion_ids == before.completion_ids


def test_gpu_recipe_on_a_cpu_machine_fails_at_once_naming_the_shortfall(tmp_path) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs the recipe asks for")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "train", str(root / "recipes" / "grpo_2xh200.yaml"),
                           f"logging.run_dir={tmp_path / 'run'}", "logging.progress=false"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "need 2 GPUs (learner: 1 x 1, rollout: 1 x 1) and this machine has" in proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - t0 < 120  # before the warm start, not after


@pytest.mark.ray
def test_ray_folder_link_survives_a_restart_of_the_run(ray_cluster, tmp_path) -> None:
    """A long run folder links ``ray`` to a short /tmp folder that is removed after the run; resuming in the same
    folder must replace the dangling link, not fail on it."""
    import shutil

    from hyrl.rollout.pool import init_ray

    run_dir = tmp_path / ("a-long-run-folder-name-" * 3)
    run_dir.mkdir()
    first = init_ray(run_dir)  # Ray already runs in this process: only the folders are made
    shutil.rmtree(first)
    assert (run_dir / "ray").is_symlink() and not (run_dir / "ray").exists()
    second = init_ray(run_dir)
    assert (run_dir / "ray").resolve() == second.resolve() and second.is_dir()
    shutil.rmtree(second)
