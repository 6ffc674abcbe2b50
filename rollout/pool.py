"""``RolloutPool``: N ``RolloutWorker`` Ray actors; requests spread by load, dead or stuck workers replaced.

Spreading: a ``generate`` call is cut into fixed chunks (``chunk_size`` prompts; by default one chunk per worker),
and each idle worker takes the next chunk, so a fast worker serves more of them than a slow one. Chunk ``i`` is
sampled with seed ``seed + i * CHUNK_SEED_STRIDE`` whichever worker serves it, so results do not depend on which
worker was free first (all workers hold the same weights).

Recovery: actors are created with ``max_restarts``, so Ray re-runs a dead worker's constructor (engine back on the
original checkpoint, version 0). Before any chunk is (re)sent to a worker, the pool checks its version and re-applies
the latest published weights if it is behind, so a batch is never sampled from a stale policy. A chunk whose worker
dies, or does not answer within ``request_timeout_s`` (the worker is then killed and restarted by Ray), goes back to
the queue for another worker, up to ``request_retries`` times; then ``RolloutError`` says which prompts failed where
and why.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from hyrl.console import RAY_SETUP_HOOK
from hyrl.rollout.batch import RolloutBatch, Sampling
from hyrl.rollout.engine import EngineConfig, engine_env
from hyrl.rollout.weights import NamedTensors, ObjectStoreTransport, WeightHandle
from hyrl.rollout.worker import RolloutWorker

_WORKER_LOST = (RayActorError, ActorUnavailableError, GetTimeoutError)
CHUNK_SEED_STRIDE = 104_729  # chunk i samples with seed + i * stride (a prime, so chunk seeds never collide)


class RolloutError(RuntimeError):
    """A request could not be served after all retries."""


@dataclass
class PoolConfig:
    """How many workers, what each gets, how hard to try."""

    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    max_restarts: int = 3  # per worker, by Ray
    request_retries: int = 2  # extra attempts per chunk after a failure
    restart_timeout_s: float = 300.0  # how long to wait for a restarted worker's engine
    request_timeout_s: float | None = None  # a chunk not back by then is re-queued and its worker restarted
    chunk_size: int | None = None  # prompts per request; None: one chunk per worker
    placement_group: Any = None  # a Ray placement group to place workers in (bundle i for worker i)
    bundle_offset: int = 0  # worker i goes to bundle bundle_offset + i
    bucket_mib: int = 256  # weight updates go into the object store in buckets of this size


def init_ray(run_dir: str | Path, num_cpus: int = 2, object_store_mib: int = 256) -> Path:
    """Start a local Ray cluster sized for a small machine (measured on 2 cores); returns Ray's temp folder.

    Ray's files go to ``run_dir/ray``, unless that path is too long for its unix sockets (AF_UNIX paths are
    limited to 107 bytes and Ray appends ~62): then to a short ``/tmp/hyrl_ray_*`` folder that ``run_dir/ray``
    links to (the caller removes it after ``ray.shutdown()``).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes ~/.ray/auth_token
    temp = Path(run_dir) / "ray"
    if len(str(temp)) > 40:
        short = Path(tempfile.mkdtemp(prefix="hyrl_ray_", dir="/tmp"))
        if temp.is_symlink():  # left by an earlier start of this run (e.g. before a resume); its target is gone
            temp.unlink()
        if not temp.exists():
            temp.symlink_to(short, target_is_directory=True)
        temp = short
    temp.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mib << 20,
             _temp_dir=str(temp), ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": RAY_SETUP_HOOK})
    return temp


class RolloutPool:
    """Serve ``generate`` over N engines; ``update_weights`` pushes one published copy of the weights to all."""

    def __init__(self, engine: EngineConfig, cfg: PoolConfig | None = None, *, wait: bool = True) -> None:
        """Start the workers; ``wait=False`` returns while their engines are still starting (``wait_ready``)."""
        self.engine, self.cfg = engine, cfg or PoolConfig()
        self.transport = ObjectStoreTransport(self.cfg.bucket_mib << 20)
        self.workers = [self._actor(i) for i in range(self.cfg.num_workers)]
        self.version = 0
        self.latest: WeightHandle | None = None
        self.resyncs = 0  # how many times a (restarted) worker got the latest weights re-applied
        self.retries = 0  # how many shards were re-sent after their worker was lost
        if wait:
            ray.get([w.health.remote() for w in self.workers], timeout=self.cfg.restart_timeout_s)

    def generate(self, prompts: list[list[int]] | list[str], sampling: Sampling | None = None) -> RolloutBatch:
        """Sample all prompts; chunks go to whichever worker is idle; the order of the input is kept."""
        sampling = sampling or Sampling()
        bounds = self.chunks(len(prompts))
        results: list[RolloutBatch | None] = [None] * len(bounds)
        attempts = [0] * len(bounds)
        queue = deque(range(len(bounds)))
        inflight: dict[ray.ObjectRef, tuple[int, int, float]] = {}  # ref -> (chunk, worker, sent at)
        out: set[int] = set()  # workers lost or killed during this call: no new chunks for them

        def fail(chunk: int, worker: int, why: str, err: BaseException | None = None) -> None:
            attempts[chunk] += 1
            if attempts[chunk] > self.cfg.request_retries:
                a, b = bounds[chunk]
                raise RolloutError(f"prompts [{a}, {b}) could not be served after {attempts[chunk]} attempts; last "
                                   f"failure on worker {worker}: {why}") from err
            self.retries += 1
            queue.appendleft(chunk)

        while queue or inflight:
            busy = {w for _, w, _ in inflight.values()}
            idle = [w for w in range(len(self.workers)) if w not in busy and w not in out]
            if queue and not idle and not inflight:  # every worker is gone for now: wait for one to come back
                idle, out = [self._pick_worker(min(out))], set()
            for worker in idle:
                if not queue:
                    break
                chunk = queue.popleft()
                try:
                    ref = self._submit(worker, prompts[slice(*bounds[chunk])], _chunk_sampling(sampling, chunk))
                except _WORKER_LOST as err:  # still restarting, or stuck: skip it in this call
                    out.add(worker)
                    fail(chunk, worker, f"not ready: {type(err).__name__}", err)
                    continue
                inflight[ref] = (chunk, worker, time.monotonic())
            if not inflight:
                continue
            wait_s = None
            if self.cfg.request_timeout_s is not None:
                oldest = min(t for _, _, t in inflight.values())
                wait_s = max(0.0, oldest + self.cfg.request_timeout_s - time.monotonic())
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
            if not done:  # the oldest chunk is overdue: give it to another worker, replace the stuck one
                ref = min(inflight, key=lambda r: inflight[r][2])
                chunk, worker, _ = inflight.pop(ref)
                ray.kill(self.workers[worker], no_restart=False)
                out.add(worker)
                fail(chunk, worker, f"no answer within request_timeout_s={self.cfg.request_timeout_s:g} s "
                                    "(worker killed; Ray restarts it)")
                continue
            chunk, worker, _ = inflight.pop(done[0])
            try:
                results[chunk] = ray.get(done[0])
            except _WORKER_LOST as err:
                out.add(worker)
                fail(chunk, worker, f"{type(err).__name__}: {err}", err)
        return RolloutBatch.concat([r for r in results if r is not None])

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """The [start, end) prompt ranges one ``generate`` of ``n`` prompts is cut into (fixed for a given n)."""
        if n == 0:
            return []
        size = self.cfg.chunk_size or -(-n // len(self.workers))
        return [(a, min(a + size, n)) for a in range(0, n, size)]

    def update_weights(self, named: NamedTensors, version: int | None = None) -> list[dict[str, Any]]:
        """Publish once (streamed in ``cfg.bucket_mib`` buckets), load on every live worker; raises (and keeps the
        old version) if a worker refuses."""
        version = self.version + 1 if version is None else version
        handle = self.transport.publish(named, version)
        refs = [w.update_weights.remote(handle) for w in self.workers]
        reports: list[dict[str, Any]] = []
        for i, ref in enumerate(refs):
            try:
                reports.append(ray.get(ref, timeout=self.cfg.request_timeout_s or self.cfg.restart_timeout_s))
            except _WORKER_LOST as err:  # re-synced when next used
                reports.append({"worker_id": i, "version": None, "lost": True})
                print(f"hyrl: rollout worker {i} was lost during the weight sync to version {version} "
                      f"({type(err).__name__}); Ray restarts it and it is re-synced to version {version} before "
                      "its next request", file=sys.stderr, flush=True)
        bad = [r for r in reports if not r.get("lost") and r["checksum"] != handle.checksum]
        if bad:
            raise RolloutError(f"checksum mismatch after update on workers {[r['worker_id'] for r in bad]}")
        self.version, self.latest = version, handle
        return reports

    def sleep(self, level: int = 1) -> None:
        """Free the engines' GPU memory for a colocated learner step (level 1: weights to host memory, KV cache
        dropped). GPU only: vLLM's sleep mode does nothing on CPU, so this raises there."""
        self._each("sleep", level)

    def wake_up(self) -> None:
        """Undo ``sleep`` before the next weight push and rollout."""
        self._each("wake_up")

    def _each(self, method: str, *args) -> None:
        """Call ``method`` on every worker; a lost one is skipped (it comes back awake, and is re-synced)."""
        for ref in [getattr(w, method).remote(*args) for w in self.workers]:
            try:
                ray.get(ref, timeout=self.cfg.restart_timeout_s)
            except _WORKER_LOST:
                continue

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
    def _actor(self, i: int):
        """Worker ``i`` as a restartable Ray actor (in its placement-group bundle when the pool has one)."""
        options: dict[str, Any] = dict(
            num_cpus=self.cfg.num_cpus_per_worker, num_gpus=self.cfg.num_gpus_per_worker,
            max_restarts=self.cfg.max_restarts, max_task_retries=0,
            runtime_env={"env_vars": engine_env(self.engine)},
        )
        if self.cfg.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.cfg.placement_group, placement_group_bundle_index=self.cfg.bundle_offset + i)
        return ray.remote(RolloutWorker).options(**options).remote(self.engine.to_dict(), i)

    def _submit(self, worker: int, prompts: list, sampling: Sampling) -> ray.ObjectRef:
        self._sync(worker, timeout_s=self.cfg.request_timeout_s or self.cfg.restart_timeout_s)
        return self.workers[worker].generate.remote(prompts, sampling)

    def _sync(self, worker: int, timeout_s: float | None = None) -> None:
        """Wait for the worker to be up; re-apply the latest weights if it restarted on older ones."""
        timeout_s = timeout_s or self.cfg.restart_timeout_s
        report = ray.get(self.workers[worker].health.remote(), timeout=timeout_s)
        if self.latest is not None and (report["version"] < self.version or report["checksum"] != self.latest.checksum):
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


def _chunk_sampling(sampling: Sampling, chunk: int) -> Sampling:
    """Chunk ``chunk``'s sampling settings: its own seed, the same whichever worker serves it."""
    if sampling.seed is None:
        return sampling
    return dataclasses.replace(sampling, seed=sampling.seed + chunk * CHUNK_SEED_STRIDE)


def engine_config(recipe, model_dir: str | Path, run_dir: str | Path, extra: dict[str, Any] | None = None
                  ) -> EngineConfig:
    """The engine a recipe asks for, on ``model_dir``'s weights: every engine setting of ``model`` and ``rollout``."""
    r = recipe
    return EngineConfig(
        model=str(Path(model_dir).resolve()), run_dir=str(run_dir), dtype=r.model.dtype,
        state_dtype=r.model.state_dtype, max_model_len=r.rollout.max_model_len, max_num_seqs=r.rollout.max_num_seqs,
        max_num_batched_tokens=r.rollout.max_num_batched_tokens, seed=r.seed, enforce_eager=r.rollout.enforce_eager,
        gpu_memory_utilization=r.rollout.gpu_memory_utilization, implementation=r.rollout.implementation,
        extra=dict(extra or {}))


def pool_config(recipe, placement=None) -> PoolConfig:
    """The pool a recipe asks for; ``placement``: the run's ``hyrl.rl.cluster.Placement``, if any."""
    r = recipe
    return PoolConfig(
        num_workers=r.rollout.num_workers, num_cpus_per_worker=r.rollout.num_cpus_per_worker,
        num_gpus_per_worker=r.rollout.num_gpus_per_worker, request_timeout_s=r.rollout.request_timeout_s,
        chunk_size=r.rollout.chunk_size, bucket_mib=r.learner.sync_bucket_mib,
        placement_group=placement.group if placement is not None else None,
        bundle_offset=placement.rollout_bundle_offset if placement is not None else 0)


def build_pool(recipe, model_dir: str | Path, run_dir: str | Path, *, placement=None,
               extra: dict[str, Any] | None = None, wait: bool = True) -> RolloutPool:
    """The one way a run builds its rollout pool (GRPO, on-policy and offline distillation), so every engine gets
    every setting of the recipe's ``model`` and ``rollout`` sections."""
    return RolloutPool(engine_config(recipe, model_dir, run_dir, extra), pool_config(recipe, placement), wait=wait)
