"""vLLM general plugin (entry point ``vllm.general_plugins: hyrl``): runs hyrl's Olmo Hybrid for olmo_hybrid models.

vLLM calls ``register()`` in every engine process (in-process and multiprocess engines alike), before it resolves
the model architecture. Set ``HYRL_VLLM_OLMO_HYBRID=0`` to keep vLLM's own ``OlmoHybridForCausalLM``; hyrl's model
is always used for folders saved by ``hyrl.model`` (architecture ``HybridForCausalLM``) and is also available as
``HyrlOlmoHybridForCausalLM``
(``hf_overrides={"architectures": ["HyrlOlmoHybridForCausalLM"]}``).
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
    ModelRegistry.register_model("HybridForCausalLM", _MODEL)  # what hyrl.model.olmo_hybrid writes in config.json
    if os.environ.get("HYRL_VLLM_OLMO_HYBRID", "1") != "0":
        ModelRegistry.register_model("OlmoHybridForCausalLM", _MODEL)
    # Upstream hook: vLLM has no public way to add a splitting op to its defaults; appending to the class-level
    # default list keeps every other default. Remove once vLLM lets plugins declare splitting ops.
    if GDN_OP not in CompilationConfig._attention_ops:
        CompilationConfig._attention_ops.append(GDN_OP)
