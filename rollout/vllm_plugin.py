"""vLLM general plugin (entry point ``vllm.general_plugins: hyrl``): makes hyrl's Olmo Hybrid available to vLLM.

vLLM calls ``register()`` in every engine process (in-process and multiprocess engines alike), before it resolves
the model architecture. hyrl's class is ``HyrlOlmoHybridForCausalLM``; hyrl's rollout engines ask for it by name
(``hf_overrides={"architectures": ["HyrlOlmoHybridForCausalLM"]}``, see ``hyrl.rollout.engine.make_llm``) and log
which class they run. Checkpoints saved by hyrl name the stock ``OlmoHybridForCausalLM``, so ``vllm serve`` of a
hyrl checkpoint runs vLLM's own class, with or without hyrl installed, unless ``HYRL_VLLM_OLMO_HYBRID=1`` asks for
hyrl's class under the stock name. Folders saved by older hyrl versions (``HybridForCausalLM``) get hyrl's class.
"""

from __future__ import annotations

import os

_MODEL = "hyrl.rollout.olmo_hybrid_vllm:HyrlOlmoHybridForCausalLM"
GDN_OP = "vllm::hyrl_gdn_core"  # keep equal to hyrl.rollout.gdn_layer.GDN_OP (not imported: that pulls in torch ops)


def register() -> None:
    """Register the model class and make hyrl's GDN op a graph-splitting op (piecewise CUDA graphs cut around it)."""
    from vllm import ModelRegistry
    from vllm.config import CompilationConfig

    ModelRegistry.register_model("HyrlOlmoHybridForCausalLM", _MODEL)
    ModelRegistry.register_model("HybridForCausalLM", _MODEL)  # what hyrl wrote in config.json before 2026-12-07
    if os.environ.get("HYRL_VLLM_OLMO_HYBRID", "0") == "1":
        ModelRegistry.register_model("OlmoHybridForCausalLM", _MODEL)
        print("hyrl: HYRL_VLLM_OLMO_HYBRID=1: OlmoHybridForCausalLM runs hyrl's implementation", flush=True)
    # Upstream hook: vLLM has no public way to add a splitting op to its defaults; appending to the class-level
    # default list keeps every other default. Remove once vLLM lets plugins declare splitting ops.
    if GDN_OP not in CompilationConfig._attention_ops:
        CompilationConfig._attention_ops.append(GDN_OP)
