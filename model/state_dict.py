"""State-dict adapters: hyrl (== transformers in-memory names) <-> HF checkpoint files <-> vLLM 0.32 parameters.

Three name spaces for the same weights:
- **in memory** (hyrl and transformers' ``OlmoHybridForCausalLM``): one fused depthwise conv per GDN layer,
  ``linear_attn.conv1d.weight`` [2 * key_dim + value_dim, 1, W] over the q | k | v channels.
- **checkpoint files** (the released ``allenai/Olmo-Hybrid-7B`` layout, what vLLM's loader reads): the conv is
  stored as ``q_conv1d`` [key_dim, 1, W], ``k_conv1d`` [key_dim, 1, W], ``v_conv1d`` [value_dim, 1, W]; all other
  names are the in-memory ones. ``to_hf_state_dict`` / ``from_hf_state_dict`` convert.
- **vLLM parameters** (TP = 1): fused ``qkv_proj``, ``gate_up_proj``, ``in_proj_qkvg`` (q | k | v | g) and the fused
  ``conv1d``. ``to_vllm_state_dict`` produces exactly these names and shapes, so a weight push can copy tensors
  straight into ``model.named_parameters()`` and skip vLLM's loader.

Upstream bugs worked around here (remove when fixed upstream):
- transformers 5.19 ``save_pretrained`` reverts its conversion mapping by cutting the fused conv into three *equal*
  parts (43/43/42 channels for key_dim 32, value_dim 64) and renames the GDN norms to ``attention_layer_norm`` /
  ``feedforward_layer_norm`` (attention layers' ``post_attention_layernorm`` too). transformers reads that back
  consistently, but vLLM gets wrong conv weights and unknown norm names. ``HybridForCausalLM.save_pretrained`` writes
  the released layout instead; ``from_hf_state_dict`` reads either layout.
- vLLM 0.32's fused conv1d weight loader fails (``list indices must be integers or slices, not NoneType``), so the
  vLLM-side copy should use ``to_vllm_state_dict`` rather than ``load_weights`` for the conv.
"""

from __future__ import annotations

import torch
from transformers import OlmoHybridConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

CONV = "linear_attn.conv1d.weight"
CONV_PARTS = ("linear_attn.q_conv1d.weight", "linear_attn.k_conv1d.weight", "linear_attn.v_conv1d.weight")
# transformers' save-side renames (its conversion mapping reversed) -> in-memory names
# (attention layers' post_attention_layernorm is saved as feedforward_layer_norm too, so the map is the same for both)
HF_SAVED_RENAMES = {
    ".attention_layer_norm.": ".input_layernorm.",
    ".feedforward_layer_norm.": ".post_attention_layernorm.",
}


def register_hf_conversion(class_name: str) -> None:
    """Let ``from_pretrained`` of a hyrl class read both checkpoint layouts, with transformers' own olmo_hybrid mapping.

    transformers applies a model type's conversion mapping (q/k/v conv concatenation, norm renames) only to its own
    classes; a class outside the library gets it only when registered under its class name.
    """
    mapping = get_checkpoint_conversion_mapping("olmo_hybrid")
    if mapping is None:
        raise RuntimeError("transformers has no 'olmo_hybrid' conversion mapping: the checkpoint layout changed")
    register_checkpoint_conversion_mapping(class_name, mapping, overwrite=True)


def _conv_sizes(config: OlmoHybridConfig) -> list[int]:
    key_dim = config.linear_key_head_dim * config.linear_num_key_heads
    return [key_dim, key_dim, config.linear_value_head_dim * config.linear_num_value_heads]


def to_hf_state_dict(sd: dict[str, torch.Tensor], config: OlmoHybridConfig) -> dict[str, torch.Tensor]:
    """In-memory names -> checkpoint-file layout: split each fused conv at [key_dim, key_dim, value_dim]."""
    out = {}
    for name, t in sd.items():
        if name.endswith(CONV):
            prefix = name[: -len(CONV)]
            for part, w in zip(CONV_PARTS, t.split(_conv_sizes(config), dim=0), strict=True):
                out[prefix + part] = w.contiguous()
        else:
            out[name] = t
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], config: OlmoHybridConfig) -> dict[str, torch.Tensor]:
    """Checkpoint-file layout (released, or transformers-saved with renamed norms) -> in-memory names.

    The q/k/v convs are concatenated whatever their split (transformers' equal thirds concatenate back correctly);
    the result must have the fused size, else the file is not an Olmo Hybrid checkpoint for this config.
    """
    out, convs = {}, {}
    for name, t in sd.items():
        for old, new in HF_SAVED_RENAMES.items():
            name = name.replace(old, new)
        part = next((p for p in CONV_PARTS if name.endswith(p)), None)
        if part is None:
            out[name] = t
        else:
            convs.setdefault(name[: -len(part)], {})[part] = t
    for prefix, parts in convs.items():
        fused = torch.cat([parts[p] for p in CONV_PARTS], dim=0)
        if fused.shape[0] != sum(_conv_sizes(config)):
            raise ValueError(f"{prefix}{CONV}: {fused.shape[0]} conv channels, config needs {sum(_conv_sizes(config))}")
        out[prefix + CONV] = fused
    return out


def to_vllm_state_dict(sd: dict[str, torch.Tensor], config: OlmoHybridConfig) -> dict[str, torch.Tensor]:
    """In-memory names -> vLLM 0.32 ``OlmoHybridForCausalLM`` parameter names and shapes (tensor parallel size 1).

    Fused: ``self_attn.qkv_proj`` = [q; k; v], ``mlp.gate_up_proj`` = [gate; up], ``linear_attn.in_proj_qkvg`` =
    [q; k; v; g] (vLLM's output_sizes [key_dim, key_dim, value_dim, value_dim]); the conv stays fused [C, 1, W].
    With ``tie_word_embeddings`` vLLM ties ``lm_head`` to the embedding, so ``lm_head.weight`` is left out.
    vLLM pads ``embed_tokens`` / ``lm_head`` rows to a multiple of 64: copy these [vocab, D] tensors into
    ``param[:vocab]`` (the padding rows are never sampled).
    """
    fused = {
        ".self_attn.qkv_proj.weight": [
            ".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight",
        ],
        ".mlp.gate_up_proj.weight": [".mlp.gate_proj.weight", ".mlp.up_proj.weight"],
        ".linear_attn.in_proj_qkvg.weight": [
            ".linear_attn.q_proj.weight", ".linear_attn.k_proj.weight",
            ".linear_attn.v_proj.weight", ".linear_attn.g_proj.weight",
        ],
    }  # fmt: skip
    source_of = {src: (dst, i) for dst, srcs in fused.items() for i, src in enumerate(srcs)}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, list[torch.Tensor | None]] = {}
    for name, t in sd.items():
        suffix = next((s for s in source_of if name.endswith(s)), None)
        if suffix is None:
            out[name] = t
            continue
        dst, i = source_of[suffix]
        key = name[: -len(suffix)] + dst
        groups.setdefault(key, [None] * len(fused[dst]))[i] = t
    for key, parts in groups.items():
        if any(p is None for p in parts):
            raise KeyError(f"{key}: missing one of its parts in the state dict")
        out[key] = torch.cat(parts, dim=0)
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
