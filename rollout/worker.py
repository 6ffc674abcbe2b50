"""``RolloutWorker``: one vLLM engine behind a small API; a plain class that ``RolloutPool`` runs as a Ray actor.

Every method is safe to call in-process too (the tests and the benchmark do), which keeps vLLM-only bugs apart from
Ray ones. The policy version starts at 0 (the checkpoint the engine was built from) and only ever goes up.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from typing import Any

from hyrl.faults import fault_point
from hyrl.rollout.batch import RolloutBatch, Sampling
from hyrl.rollout.engine import EngineConfig, make_llm
from hyrl.rollout.weights import (
    ObjectStoreTransport,
    WeightHandle,
    WeightTransport,
    checksum,
    read_folder,
)


class RolloutWorker:
    """Owns one engine: ``generate``, ``update_weights`` (tensors, a folder or a published handle), ``health``."""

    def __init__(self, engine: EngineConfig | dict[str, Any], worker_id: int = 0,
                 transport: WeightTransport | None = None) -> None:
        self.cfg = engine if isinstance(engine, EngineConfig) else EngineConfig(**engine)
        self.worker_id = worker_id
        self.transport = transport or ObjectStoreTransport()
        self.llm = make_llm(self.cfg)
        self.version = 0
        self.weights_checksum = ""
        self.started_at = time.time()
        self.asleep = False  # colocated mode: GPU memory handed to the learner (``sleep``)

    def generate(self, prompts: list[list[int]] | list[str], sampling: Sampling | None = None) -> RolloutBatch:
        """Sample completions; token ids or text prompts; ``sampling.n`` samples per prompt, prompt-major."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = sampling or Sampling()
        params = SamplingParams(
            n=s.n, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            stop_token_ids=list(s.stop_token_ids), ignore_eos=s.ignore_eos, logprobs=0,
        )
        if s.seed is not None:
            import torch

            torch.manual_seed(s.seed)
        inputs = [TokensPrompt(prompt_token_ids=list(p)) if not isinstance(p, str) else p for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        batch = RolloutBatch([], [], [], [], policy_version=self.version)
        for out in outputs:
            for comp in out.outputs:
                ids = list(comp.token_ids)
                batch.prompt_ids.append(list(out.prompt_token_ids))
                batch.completion_ids.append(ids)
                batch.logprobs.append([step[t].logprob for step, t in zip(comp.logprobs, ids)])
                batch.finish_reasons.append(str(comp.finish_reason))
                batch.worker_ids.append(self.worker_id)
        return batch

    def update_weights(self, weights: WeightHandle | dict | list | str, version: int | None = None,
                       expected_checksum: str | None = None) -> dict[str, Any]:
        """Load new weights and bump the version; refused (old weights kept) on a checksum or shape mismatch.

        ``weights``: a handle from ``transport.publish``, a {name: tensor} dict / (name, tensor) list, or a folder.
        """
        t0 = time.perf_counter()
        if isinstance(weights, WeightHandle) and weights.kind == "nccl":
            return self._update_nccl(weights, t0)
        if isinstance(weights, WeightHandle):
            named = list(self.transport.receive(weights))
            version, expected_checksum = weights.version, weights.checksum
        elif isinstance(weights, (str, os.PathLike)):
            named = read_folder(weights)
        else:
            named = list(weights.items()) if isinstance(weights, dict) else list(weights)
        got = checksum(named)
        if expected_checksum is not None and got != expected_checksum:
            raise ValueError(f"worker {self.worker_id}: weight checksum {got} != sent {expected_checksum}; refused")
        new_version = self.version + 1 if version is None else version
        # Versions only grow; version 0 (the weights a run starts from) may be replaced, e.g. by a warm start's
        # weights that were trained while this engine was starting on the initial checkpoint.
        if new_version < self.version or (new_version == self.version and new_version != 0):
            raise ValueError(f"worker {self.worker_id}: version {new_version} is not newer than {self.version}")
        fault_point("weight-sync", new_version)
        self._load(named)
        self.llm.reset_prefix_cache()
        self.version, self.weights_checksum = new_version, got
        return {"worker_id": self.worker_id, "version": self.version, "checksum": got,
                "num_tensors": len(named), "seconds": time.perf_counter() - t0}

    def connect_weight_group(self, host: str, port: int, rank: int, world_size: int) -> None:
        """GPU path: join the learner's NCCL group as ``rank`` (>= 1; one rank per engine, TP=1 engines for now)."""
        self.llm.collective_rpc("hyrl_nccl_connect", args=(host, port, rank, world_size))

    def _update_nccl(self, handle: WeightHandle, t0: float) -> dict[str, Any]:
        """Receive a bucketed NCCL broadcast inside the engine (checksum and shapes checked there), then load."""
        if handle.version <= self.version:
            raise ValueError(f"worker {self.worker_id}: version {handle.version} is not newer than {self.version}")
        count = self.llm.collective_rpc("hyrl_nccl_load", args=(handle,))[0]
        self.llm.reset_prefix_cache()
        self.version, self.weights_checksum = handle.version, handle.checksum
        return {"worker_id": self.worker_id, "version": self.version, "checksum": handle.checksum,
                "num_tensors": count, "seconds": time.perf_counter() - t0}

    def _load(self, named: list) -> None:
        """In-process engines take the tensors directly; engines in other processes read them from a tmpfs file."""
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            self.llm.collective_rpc("hyrl_load", args=(named,))
            return
        from safetensors.torch import save_file

        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=shm) as f:
            save_file({n: t.detach().contiguous().cpu() for n, t in named}, f.name)
            self.llm.collective_rpc("hyrl_load_file", args=(f.name,))

    def sleep(self, level: int = 1) -> None:
        """Release GPU memory while a colocated learner steps (vLLM sleep mode; the engine needs
        ``enable_sleep_mode=True``)."""
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("rollout sleep/wake (colocated learner and rollout) needs GPUs: vLLM's sleep mode "
                               "frees GPU memory and is unavailable on CPU; use ray.placement: separate")
        self.llm.sleep(level=level)
        self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Names and shapes accepted by ``update_weights`` (from the engine's model)."""
        return self.llm.collective_rpc("hyrl_checkpoint_shapes")[0]

    def health(self) -> dict[str, Any]:
        """Cheap liveness report: pid, version, checksum of the last update, peak RSS (MiB)."""
        return {
            "ok": True, "worker_id": self.worker_id, "pid": os.getpid(), "version": self.version,
            "checksum": self.weights_checksum, "uptime_s": time.time() - self.started_at,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
