"""Checkpoints both ways between hyrl and transformers, and the vLLM name/shape adapter.

Legend: B batch, T tokens. Conv channel layout in a GDN layer: q | k | v = key_dim | key_dim | value_dim.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from hyrl.model.olmo_hybrid import HybridForCausalLM, build_model
from hyrl.model.state_dict import from_hf_state_dict, to_hf_state_dict, to_vllm_state_dict


def tiny_config(**overrides: object) -> OlmoHybridConfig:
    """3 GDN + 1 attention layers; GDN key_dim 32 != value_dim 64, so an equal-thirds conv split would be wrong."""
    base = {
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "linear_num_key_heads": 2, "linear_num_value_heads": 2,
        "linear_key_head_dim": 16, "linear_value_head_dim": 32, "pad_token_id": 0, "eos_token_id": 1,
    }  # fmt: skip
    return OlmoHybridConfig(**{**base, **overrides})


def logits(model: torch.nn.Module, ids_BT: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids_BT).logits


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    """hyrl -> HF folder -> transformers loads it -> same logits; transformers -> folder -> hyrl -> same logits."""
    config = tiny_config()
    ours = build_model(config)
    ids_BT = torch.randint(2, config.vocab_size, (2, 70))
    ours.save_pretrained(tmp_path / "hyrl")
    oracle = OlmoHybridForCausalLM.from_pretrained(tmp_path / "hyrl")
    assert (logits(oracle, ids_BT) - logits(ours, ids_BT)).abs().max() <= 1e-5

    oracle.save_pretrained(tmp_path / "hf")
    back = HybridForCausalLM.from_pretrained(tmp_path / "hf")
    assert (logits(back, ids_BT) - logits(ours, ids_BT)).abs().max() <= 1e-5
    again = HybridForCausalLM.from_pretrained(tmp_path / "hyrl")
    for name, t in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
        assert torch.equal(again.state_dict()[name], t), name


def test_saved_folder_has_released_layout(tmp_path: Path) -> None:
    """q/k/v convs are cut at key_dim, key_dim, value_dim (not thirds) and keep the in-memory norm names."""
    config = tiny_config()
    ours = build_model(config)
    ours.save_pretrained(tmp_path)
    files = load_file(tmp_path / "model.safetensors")
    fused = ours.state_dict()["model.layers.0.linear_attn.conv1d.weight"]
    q, k, v = (files[f"model.layers.0.linear_attn.{p}_conv1d.weight"] for p in "qkv")
    assert (q.shape[0], k.shape[0], v.shape[0]) == (32, 32, 64)
    assert torch.equal(torch.cat([q, k, v]), fused)
    assert "model.layers.0.input_layernorm.weight" in files and "model.layers.0.linear_attn.conv1d.weight" not in files
    assert set(from_hf_state_dict(files, config)) == set(ours.state_dict())


def test_from_hf_state_dict_reads_transformers_saved_layout(tmp_path: Path) -> None:
    """transformers' own files (equal-thirds conv, renamed norms) convert back to the exact in-memory tensors."""
    config = tiny_config()
    oracle = OlmoHybridForCausalLM(config)
    oracle.save_pretrained(tmp_path)
    files = load_file(tmp_path / "model.safetensors")
    assert files["model.layers.0.linear_attn.v_conv1d.weight"].shape[0] != 64, "transformers fixed its conv split"
    converted = from_hf_state_dict(files, config)
    want = oracle.state_dict()
    assert set(converted) == set(want)
    for name, t in want.items():
        assert torch.equal(converted[name], t), name
    roundtrip = from_hf_state_dict(to_hf_state_dict(want, config), config)
    assert all(torch.equal(roundtrip[n], t) for n, t in want.items())


def test_from_hf_state_dict_rejects_wrong_conv_size() -> None:
    config = tiny_config()
    files = to_hf_state_dict(build_model(config).state_dict(), config)
    files["model.layers.0.linear_attn.v_conv1d.weight"] = files["model.layers.0.linear_attn.v_conv1d.weight"][:10]
    with pytest.raises(ValueError, match="conv channels"):
        from_hf_state_dict(files, config)


def vllm_shapes(config: OlmoHybridConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of vLLM 0.32's OlmoHybridForCausalLM at TP 1, written out from its module definitions."""
    D, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = D // config.num_attention_heads
    key_dim = config.linear_num_key_heads * config.linear_key_head_dim
    value_dim = config.linear_num_value_heads * config.linear_value_head_dim
    H, W = config.linear_num_value_heads, config.linear_conv_kernel_dim
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i, kind in enumerate(config.layer_types):
        p = f"model.layers.{i}."
        shapes |= {p + "mlp.gate_up_proj.weight": (2 * I, D), p + "mlp.down_proj.weight": (D, I)}
        shapes[p + "post_attention_layernorm.weight"] = (D,)
        if kind == "linear_attention":
            a = p + "linear_attn."
            shapes |= {
                p + "input_layernorm.weight": (D,),
                a + "in_proj_qkvg.weight": (2 * key_dim + 2 * value_dim, D),
                a + "a_proj.weight": (H, D),
                a + "b_proj.weight": (H, D),
                a + "conv1d.weight": (2 * key_dim + value_dim, 1, W),
                a + "A_log": (H,),
                a + "dt_bias": (H,),
                a + "o_norm.weight": (config.linear_value_head_dim,),
                a + "o_proj.weight": (D, value_dim),
            }
        else:
            kv = config.num_key_value_heads * hd
            a = p + "self_attn."
            q_dim = config.num_attention_heads * hd
            shapes |= {
                p + "post_feedforward_layernorm.weight": (D,),
                a + "qkv_proj.weight": (q_dim + 2 * kv, D),
                a + "q_norm.weight": (D,),
                a + "k_norm.weight": (kv,),
                a + "o_proj.weight": (D, q_dim),
            }
    return shapes


def test_to_vllm_state_dict_names_shapes_and_splits() -> None:
    config = tiny_config()
    sd = build_model(config).state_dict()
    out = to_vllm_state_dict(sd, config)
    assert {n: tuple(t.shape) for n, t in out.items()} == vllm_shapes(config)
    # vLLM reads in_proj_qkvg at output_sizes [key, key, value, value] and the conv at [key, key, value]
    q, k, v, g = out["model.layers.0.linear_attn.in_proj_qkvg.weight"].split([32, 32, 64, 64])
    for part, t in zip("qkvg", (q, k, v, g), strict=True):
        assert torch.equal(t, sd[f"model.layers.0.linear_attn.{part}_proj.weight"])
    files = to_hf_state_dict(sd, config)
    conv_parts = out["model.layers.0.linear_attn.conv1d.weight"].split([32, 32, 64])
    for part, t in zip("qkv", conv_parts, strict=True):
        assert torch.equal(t, files[f"model.layers.0.linear_attn.{part}_conv1d.weight"])
    q, k, v = out["model.layers.3.self_attn.qkv_proj.weight"].split([64, 32, 32])
    assert torch.equal(k, sd["model.layers.3.self_attn.k_proj.weight"])


def test_to_vllm_state_dict_tied_embeddings_drop_lm_head() -> None:
    config = tiny_config(tie_word_embeddings=True)
    out = to_vllm_state_dict(build_model(config).state_dict(), config)
    assert "lm_head.weight" not in out and "model.embed_tokens.weight" in out


@pytest.mark.vllm
def test_to_vllm_state_dict_agrees_with_vllm_weight_mapper() -> None:
    """vLLM's own name mapper, run on the checkpoint-file names, stacks exactly our fused tensors in our order."""
    vllm_olmo = pytest.importorskip("vllm.model_executor.models.olmo_hybrid")
    config = tiny_config()
    sd = build_model(config).state_dict()
    files = to_hf_state_dict(sd, config)
    stacked: dict[str, list[tuple[object, torch.Tensor]]] = {}
    for name, t in files.items():
        new_name, shard = vllm_olmo.OlmoHybridModel.hf_to_vllm_mapper._map_name_with_shard(name)
        stacked.setdefault(new_name, []).append((shard, t))
    ours = to_vllm_state_dict(sd, config)
    assert set(stacked) == set(ours)
    order = {"q": 0, "k": 1, "v": 2}
    for name, parts in stacked.items():
        parts.sort(key=lambda p: order.get(p[0], p[0]) if p[0] is not None else 0)
        assert torch.equal(torch.cat([t for _, t in parts]), ours[name]), name


def test_load_state_dict_accepts_the_saved_file_layout(tmp_path: Path) -> None:
    """HF Trainer resumes with ``model.load_state_dict(load_file(model.safetensors))``: the split convs must load."""
    from safetensors.torch import load_file

    from hyrl.model.olmo_hybrid import HybridForCausalLM
    from hyrl.model.presets import preset_config

    config = preset_config("tiny", vocab_size=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(1)
    saved = HybridForCausalLM(config)
    saved.save_pretrained(tmp_path)
    torch.manual_seed(2)
    fresh = HybridForCausalLM(config)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    for (name, a), (_, b) in zip(saved.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_folder_names_the_stock_architecture(tmp_path: Path) -> None:
    """A hyrl checkpoint names transformers' and vLLM's class, so it loads without hyrl: AutoModelForCausalLM builds
    transformers' own OlmoHybridForCausalLM from it, with hyrl's logits; hyrl's engines pick hyrl's vLLM class by
    the model type, not by this name."""
    import json

    from transformers import AutoModelForCausalLM

    from hyrl.rollout.engine import hyrl_architecture

    config = tiny_config()
    ours = build_model(config)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["OlmoHybridForCausalLM"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(theirs) is OlmoHybridForCausalLM
    ids_BT = torch.randint(2, config.vocab_size, (2, 20))
    assert (logits(theirs, ids_BT) - logits(ours, ids_BT)).abs().max() <= 1e-5
    assert hyrl_architecture(tmp_path) == "HyrlOlmoHybridForCausalLM"
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert hyrl_architecture(tmp_path / "dense") is None  # a dense teacher runs vLLM's own class
