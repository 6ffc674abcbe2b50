"""``RolloutPool``: N ``RolloutWorker`` Ray actors, requests split across them, dead workers restarted and re-synced.

Recovery: actors are created with ``max_restarts``, so Ray re-runs a dead worker's constructor (engine back on the
original checkpoint, version 0). Before any shard is (re)sent to a worker, the pool checks its version and re-applies
the latest published weights if it is behind, so a batch is never sampled from a stale policy. A shard that fails is
retried (on the restarted worker, or another live one) up to ``request_retries`` times, then ``RolloutError`` says
which prompts failed where and why.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from hyrl.rollout.batch import RolloutBatch, Sampling
from hyrl.rollout.engine import EngineConfig, engine_env
from hyrl.rollout.weights import NamedTensors, ObjectStoreTransport, WeightHandle
from hyrl.rollout.worker import RolloutWorker

_WORKER_LOST = (RayActorError, ActorUnavailableError, GetTimeoutError)


class RolloutError(RuntimeError):
    """A request could not be served after all retries."""


@dataclass
class PoolConfig:
    """How many workers, what each gets, how hard to try."""

    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    max_restarts: int = 3  # per worker, by Ray
    request_retries: int = 2  # extra attempts per shard after a failure
    restart_timeout_s: float = 300.0  # how long to wait for a restarted worker's engine


def init_ray(run_dir: str | Path, num_cpus: int = 2, object_store_mib: int = 256) -> Path:
    """Start a local Ray cluster sized for a small machine (PLATFORM.md); returns Ray's temp folder.

    Ray's files go to ``run_dir/ray``, unless that path is too long for its unix sockets (AF_UNIX paths are
    limited to 107 bytes and Ray appends ~62): then to a short ``/tmp/hyrl_ray_*`` folder that ``run_dir/ray``
    links to (the caller removes it after ``ray.shutdown()``).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes ~/.ray/auth_token
    temp = Path(run_dir) / "ray"
    if len(str(temp)) > 40:
        short = Path(tempfile.mkdtemp(prefix="hyrl_ray_", dir="/tmp"))
        if not temp.exists():
            temp.symlink_to(short, target_is_directory=True)
        temp = short
    temp.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mib << 20,
             _temp_dir=str(temp), ignore_reinit_error=True, log_to_driver=False)
    return temp


class RolloutPool:
    """Serve ``generate`` over N engines; ``update_weights`` pushes one published copy of the weights to all."""

    def __init__(self, engine: EngineConfig, cfg: PoolConfig | None = None) -> None:
        self.engine, self.cfg = engine, cfg or PoolConfig()
        self.transport = ObjectStoreTransport()
        actor = ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.num_cpus_per_worker, num_gpus=self.cfg.num_gpus_per_worker,
            max_restarts=self.cfg.max_restarts, max_task_retries=0,
            runtime_env={"env_vars": engine_env(engine)},
        )
        self.workers = [actor.remote(engine.to_dict(), i) for i in range(self.cfg.num_workers)]
        self.version = 0
        self.latest: WeightHandle | None = None
        self.resyncs = 0  # how many times a (restarted) worker got the latest weights re-applied
        self.retries = 0  # how many shards were re-sent after their worker was lost
        ray.get([w.health.remote() for w in self.workers], timeout=self.cfg.restart_timeout_s)

    def generate(self, prompts: list[list[int]] | list[str], sampling: Sampling | None = None) -> RolloutBatch:
        """Sample all prompts, split into one contiguous shard per worker; order of the input is kept."""
        bounds = _split(len(prompts), len(self.workers))
        shards = [prompts[a:b] for a, b in bounds]
        results: list[RolloutBatch | None] = [None] * len(shards)
        attempts = [0] * len(shards)
        pending = {self._submit(i, i, shards[i], sampling): (i, i) for i in range(len(shards)) if shards[i]}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard, worker = pending.pop(done[0])
            try:
                results[shard] = ray.get(done[0])
            except _WORKER_LOST as err:
                attempts[shard] += 1
                if attempts[shard] > self.cfg.request_retries:
                    a, b = bounds[shard]
                    raise RolloutError(
                        f"prompts [{a}, {b}) could not be served after {attempts[shard]} attempts; last failure on "
                        f"worker {worker}: {type(err).__name__}: {err}"
                    ) from err
                worker = self._pick_worker(worker)
                self.retries += 1
                pending[self._submit(worker, shard, shards[shard], sampling)] = (shard, worker)
        return RolloutBatch.concat([r for r in results if r is not None])

    def update_weights(self, named: NamedTensors, version: int | None = None) -> list[dict[str, Any]]:
        """Publish once, load on every live worker; raises (and keeps the old version) if a worker refuses."""
        version = self.version + 1 if version is None else version
        handle = self.transport.publish(named, version)
        refs = [w.update_weights.remote(handle) for w in self.workers]
        reports: list[dict[str, Any]] = []
        for i, ref in enumerate(refs):
            try:
                reports.append(ray.get(ref))
            except _WORKER_LOST:  # re-synced when next used
                reports.append({"worker_id": i, "version": None, "lost": True})
        bad = [r for r in reports if not r.get("lost") and r["checksum"] != handle.checksum]
        if bad:
            raise RolloutError(f"checksum mismatch after update on workers {[r['worker_id'] for r in bad]}")
        self.version, self.latest = version, handle
        return reports

    def health(self) -> list[dict[str, Any]]:
        """Each worker's report, or {'ok': False, 'error': ...} for one that does not answer in 10 s."""
        out = []
        for i, w in enumerate(self.workers):
            try:
                out.append(ray.get(w.health.remote(), timeout=10))
            except _WORKER_LOST as err:
                out.append({"ok": False, "worker_id": i, "error": f"{type(err).__name__}: {err}"})
        return out

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []

    # --- internals ---
    def _submit(self, worker: int, shard: int, prompts: list, sampling: Sampling | None) -> ray.ObjectRef:
        self._sync(worker)
        return self.workers[worker].generate.remote(prompts, sampling)

    def _sync(self, worker: int) -> None:
        """Wait for the worker to be up; re-apply the latest weights if it restarted on older ones."""
        report = ray.get(self.workers[worker].health.remote(), timeout=self.cfg.restart_timeout_s)
        if self.latest is not None and report["version"] < self.version:
            ray.get(self.workers[worker].update_weights.remote(self.latest), timeout=self.cfg.restart_timeout_s)
            self.resyncs += 1

    def _pick_worker(self, failed: int) -> int:
        """A live worker for a retry: another one if it answers now, else the failed one once Ray restarted it."""
        order = [i for i in range(len(self.workers)) if i != failed] + [failed]
        deadline = time.monotonic() + self.cfg.restart_timeout_s
        gone: set[int] = set()
        while time.monotonic() < deadline and len(gone) < len(order):
            for i in order:
                if i in gone:
                    continue
                try:
                    ray.get(self.workers[i].health.remote(), timeout=10)
                    return i
                except ActorDiedError:  # restarts used up: this worker will not come back
                    gone.add(i)
                except _WORKER_LOST:  # restarting
                    continue
            time.sleep(1.0)
        raise RolloutError(f"no rollout worker is alive (of {len(self.workers)}) after worker {failed} failed")

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every worker answers on the latest weights (restarted ones re-synced); their health reports."""
        deadline = time.monotonic() + self.cfg.restart_timeout_s
        for i in range(len(self.workers)):
            while True:
                try:
                    self._sync(i)
                    break
                except _WORKER_LOST:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)
        return self.health()


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [start, end) ranges covering 0..n."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds
