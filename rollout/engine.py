"""Building one vLLM engine for rollouts: the config, the process environment it needs, and the ``LLM`` itself.

Environment facts (measured on 2-core CPU machines): on CPU the engine needs ``VLLM_CPU_KVCACHE_SPACE`` (GiB),
runs in-process with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (5 s start, 1.7 GiB instead of 33 s, 3 GiB) and keeps its
compile cache in ``VLLM_CACHE_ROOT``. Per-request sampling seeds crash with chunked prefill on CPU, so the seed is
the engine's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyrl.faults import FAULT_ENV


@dataclass
class EngineConfig:
    """What a rollout engine is built from; plain data so it crosses into Ray actors as is."""

    model: str
    run_dir: str  # vLLM cache and logs live under here, never in the repository
    dtype: str = "float32"
    state_dtype: str = "float32"  # GDN recurrent state in the cache; "bfloat16" trades accuracy for memory
    max_model_len: int = 1024
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 256  # small on purpose: prompts longer than this exercise chunked prefill
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    seed: int = 0
    kv_cache_gib: int = 1  # CPU only (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    # "hyrl": hyrl's model class for the architectures it implements (Olmo Hybrid: fp32 GDN state, learner-identical
    # math); "vllm": vLLM's own class for the folder's architecture
    implementation: str = "hyrl"
    extra: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def engine_env(cfg: EngineConfig) -> dict[str, str]:
    """Environment variables an engine process needs (set before vLLM is imported; used as a Ray runtime_env)."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(Path(cfg.run_dir) / "vllm_cache"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }
    if not torch.cuda.is_available():
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)
    env.update({k: os.environ[k] for k in FAULT_ENV if k in os.environ})  # fault-injection tests reach workers too
    return env


def apply_engine_env(cfg: EngineConfig) -> None:
    """Set ``engine_env`` in this process, keeping values the caller already set."""
    for key, value in engine_env(cfg).items():
        os.environ.setdefault(key, value)


# model_type -> hyrl's vLLM class for it (registered by hyrl.rollout.vllm_plugin)
HYRL_VLLM_CLASSES = {"olmo_hybrid": "HyrlOlmoHybridForCausalLM"}


def hyrl_architecture(model: str | Path) -> str | None:
    """hyrl's vLLM class for the model folder's architecture, or None where hyrl has none (e.g. a dense teacher)."""
    config = Path(model) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return HYRL_VLLM_CLASSES.get(model_type)


def make_llm(cfg: EngineConfig):
    """A ``vllm.LLM`` for ``cfg``. Checkpoints name the stock architecture (``OlmoHybridForCausalLM``), so hyrl's
    implementation is asked for here, explicitly, and the engine says which one it runs."""
    apply_engine_env(cfg)
    from vllm import LLM

    from hyrl.rollout.weights import EXTENSION

    kwargs: dict[str, Any] = dict(
        model=cfg.model,
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        enable_chunked_prefill=cfg.enable_chunked_prefill,
        enable_prefix_caching=False,  # mamba prefix caching would copy states around; rollouts rarely share prefixes
        enforce_eager=cfg.enforce_eager,
        seed=cfg.seed,
        mamba_ssm_cache_dtype=cfg.state_dtype,
        # Log-probs of the distribution actually sampled (after temperature), which is what the learner scores and
        # what importance weights compare against; vLLM's default ("raw_logprobs") is the T=1 distribution, which
        # at temperature 0.6 showed as a 0.02 mismatch KL with identical weights.
        logprobs_mode="processed_logprobs",
        tensor_parallel_size=cfg.tensor_parallel_size,
        worker_extension_cls=EXTENSION,  # hyrl_load / hyrl_checkpoint_shapes / NCCL receive inside the engine
    )
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    ours = hyrl_architecture(cfg.model) if cfg.implementation == "hyrl" else None
    if ours is not None:
        kwargs["hf_overrides"] = {"architectures": [ours]}
    kwargs.update(cfg.extra)
    chosen = (kwargs.get("hf_overrides") or {}).get("architectures", ["the folder's architecture"])[0]
    print(f"hyrl: rollout engine for {cfg.model}: vLLM model class {chosen} "
          f"({'hyrl' if chosen == ours else 'vLLM'}'s implementation), recurrent state {cfg.state_dtype}",
          file=sys.stderr, flush=True)
    return LLM(**kwargs)
