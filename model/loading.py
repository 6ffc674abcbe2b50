"""Build, load and save the policy model: the one place that picks the model implementation.

``implementation="hyrl"`` is hyrl's own Olmo Hybrid (same math as the rollout plugin); ``"transformers"`` is
transformers' ``OlmoHybridForCausalLM``, kept as a test oracle and a fallback for other architectures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, OlmoHybridConfig, PreTrainedModel

Implementation = Literal["hyrl", "transformers"]


def _model_class(config, implementation: Implementation) -> type[PreTrainedModel] | None:
    if implementation == "hyrl" and isinstance(config, OlmoHybridConfig):
        from hyrl.model.olmo_hybrid import HybridForCausalLM

        return HybridForCausalLM
    return None


def new_causal_lm(config, implementation: Implementation = "hyrl") -> PreTrainedModel:
    """A random-init model for ``config`` (the caller seeds torch for determinism)."""
    cls = _model_class(config, implementation)
    return cls(config) if cls is not None else AutoModelForCausalLM.from_config(config)


def load_causal_lm(
    path: str | Path, implementation: Implementation = "hyrl", dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load an HF model folder with the chosen implementation."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    cls = _model_class(config, implementation) or AutoModelForCausalLM
    return cls.from_pretrained(str(path), dtype=dtype)


def save_causal_lm(model: PreTrainedModel, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """Save ``model`` (or ``state_dict`` in its architecture: gathered shards) as an HF folder that transformers,
    hyrl and vLLM all load."""
    model.save_pretrained(str(out_dir), state_dict=state_dict)
