"""Weight updates and crash recovery of rollout workers (real vLLM-CPU engines in real Ray actors).

After every accepted update the rollout log-probs must equal the learner's for the same tokens (<= 1e-5), the
policy version must go up, a bad update must leave the old weights serving, and a worker killed mid-batch must
come back on the latest weights without the batch failing.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
import torch

from hyrl.rollout.batch import Sampling
from hyrl.rollout.mismatch import learner_logprobs, mismatch

BAD_NAME = "model.layers.1.linear_attn.v_proj.weight"


def _learner(path, perturb_seed: int | None = None):
    """The checkpoint as the learner holds it, optionally with every weight nudged (a fake optimizer step)."""
    try:
        from hyrl.model.loading import load_causal_lm

        model = load_causal_lm(path).eval()
    except ImportError:
        from transformers import OlmoHybridForCausalLM

        model = OlmoHybridForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if perturb_seed is not None:
        g = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (int(torch.randint(2, 100, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _max_delta(batch, learner) -> float:
    return mismatch(batch.logprobs, learner_logprobs(learner, batch.prompt_ids, batch.completion_ids)).max_abs_delta


@pytest.mark.vllm
@pytest.mark.ray
def test_update_weights_changes_policy(rollout_pool, tiny_model_dir) -> None:
    prompts, sampling = _prompts(8), Sampling(max_tokens=16, ignore_eos=True)
    old, new = _learner(tiny_model_dir), _learner(tiny_model_dir, perturb_seed=1)
    v0 = rollout_pool.version
    reports = rollout_pool.update_weights(new.named_parameters())
    assert rollout_pool.version == v0 + 1 and [r["version"] for r in reports] == [v0 + 1, v0 + 1]
    assert len({r["checksum"] for r in reports}) == 1

    batch = rollout_pool.generate(prompts, sampling)
    assert batch.policy_version == v0 + 1 and set(batch.worker_ids) == {0, 1}
    assert _max_delta(batch, new) <= 1e-5
    assert _max_delta(batch, old) > 1e-2  # the update really changed the sampling policy

    bad = [(n, torch.zeros(3, 3) if n == BAD_NAME else p.detach()) for n, p in new.named_parameters()]
    with pytest.raises(Exception, match=re.escape(BAD_NAME)):
        rollout_pool.update_weights(bad)
    assert rollout_pool.version == v0 + 1
    again = rollout_pool.generate(prompts, sampling)
    assert again.policy_version == v0 + 1 and _max_delta(again, new) <= 1e-5
    assert all(h["version"] == v0 + 1 for h in rollout_pool.health())


@pytest.mark.vllm
def test_update_from_folder_bumps_version(vllm_worker, tiny_model_dir, tmp_path) -> None:
    """A saved checkpoint folder loads like pushed tensors (split conv1d pieces re-fused); then restore the fixture."""
    from hyrl.model.loading import save_causal_lm

    new = _learner(tiny_model_dir, perturb_seed=2)
    save_causal_lm(new, tmp_path / "step1")
    v0 = vllm_worker.version
    report = vllm_worker.update_weights(str(tmp_path / "step1"))
    batch = vllm_worker.generate(_prompts(4, seed=3), Sampling(max_tokens=12, ignore_eos=True))
    vllm_worker.update_weights(str(tiny_model_dir))  # leave the session engine on the checkpoint
    assert report["version"] == v0 + 1 and batch.policy_version == v0 + 1
    assert vllm_worker.version == v0 + 2
    assert _max_delta(batch, new) <= 1e-5
    with pytest.raises(ValueError, match="not newer"):
        vllm_worker.update_weights(new.named_parameters(), version=v0 + 1)


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_worker_crash_recovers(rollout_pool, tiny_model_dir) -> None:
    """SIGKILL worker 0 while it samples; the batch still completes, from the latest policy, and worker 0 returns."""
    new = _learner(tiny_model_dir, perturb_seed=3)
    rollout_pool.update_weights(new.named_parameters())
    version, resyncs, retries = rollout_pool.version, rollout_pool.resyncs, rollout_pool.retries
    victim = rollout_pool.health()[0]["pid"]
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_soon)
    killer.start()
    batch = rollout_pool.generate(_prompts(16, seed=4), Sampling(max_tokens=400, ignore_eos=True))
    killer.join()
    assert killed_at and rollout_pool.retries == retries + 1, "worker 0 must die while its shard is in flight"
    assert len(batch) == 16 and batch.num_tokens == 16 * 400 and batch.policy_version == version
    assert set(batch.worker_ids) == {1}, "the dead worker's prompts must be re-queued to the live one"
    assert _max_delta(batch, new) <= 1e-5

    health = rollout_pool.wait_ready()  # Ray restarted worker 0 on the checkpoint; the pool re-applies `version`
    assert all(h["ok"] and h["version"] == version for h in health)
    assert health[0]["pid"] != victim and rollout_pool.resyncs == resyncs + 1
    after = rollout_pool.generate(_prompts(8, seed=5), Sampling(max_tokens=16, ignore_eos=True))
    assert set(after.worker_ids) == {0, 1} and _max_delta(after, new) <= 1e-5


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_request_fails_clearly_after_retries(rollout_pool) -> None:
    """With no retries left, a shard whose worker dies raises RolloutError naming the prompts and the worker."""
    from hyrl.rollout.pool import RolloutError

    victim = rollout_pool.health()[0]["pid"]
    threading.Thread(target=lambda: (time.sleep(1.0), os.kill(victim, signal.SIGKILL))).start()
    retries, rollout_pool.cfg.request_retries = rollout_pool.cfg.request_retries, 0
    try:
        with pytest.raises(RolloutError, match=r"prompts \[0, 4\) could not be served after 1 attempts; .*worker 0"):
            rollout_pool.generate(_prompts(8, seed=6), Sampling(max_tokens=900, ignore_eos=True))
    finally:
        rollout_pool.cfg.request_retries = retries
    assert all(h["ok"] for h in rollout_pool.wait_ready())  # the pool serves again once Ray restarted the worker


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_weight_sync_is_resynced(ray_cluster, tiny_model_dir, rollout_run_dir, tmp_path,
                                                    capfd, monkeypatch) -> None:
    """SIGKILL a rollout worker after it received weights version 1 and before it loaded them (``HYRL_FAULT``):
    the sync reports the worker lost and says so, the pool keeps version 1 as the latest, and once Ray restarted the
    worker (on the checkpoint) it is re-synced to version 1 and samples the new policy, not the old one."""
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.pool import PoolConfig, RolloutPool

    monkeypatch.setenv("HYRL_FAULT", "weight-sync:1")
    monkeypatch.setenv("HYRL_FAULT_ONCE", str(tmp_path / "fired"))  # the restarted worker must survive its re-sync
    cfg = EngineConfig(model=str(tiny_model_dir), run_dir=str(rollout_run_dir), max_num_batched_tokens=64,
                       max_num_seqs=16)
    pool = RolloutPool(cfg, PoolConfig(num_workers=1, num_cpus_per_worker=0.25, request_timeout_s=120))
    try:
        old, new = _learner(tiny_model_dir), _learner(tiny_model_dir, perturb_seed=7)
        victim = pool.health()[0]["pid"]
        reports = pool.update_weights(new.named_parameters())
        assert (tmp_path / "fired").exists(), "the worker must have reached the fault point"
        assert reports == [{"worker_id": 0, "version": None, "lost": True}] and pool.version == 1
        assert "rollout worker 0 was lost during the weight sync to version 1" in capfd.readouterr().err

        health = pool.wait_ready()
        assert health[0]["ok"] and health[0]["version"] == 1 and health[0]["pid"] != victim
        assert pool.resyncs == 1
        batch = pool.generate(_prompts(8, seed=8), Sampling(max_tokens=16, ignore_eos=True))
        assert batch.policy_version == 1
        assert _max_delta(batch, new) <= 1e-5
        assert _max_delta(batch, old) > 1e-3, "the restarted worker must not serve the checkpoint it restarted on"
    finally:
        pool.shutdown()
