"""Named Olmo Hybrid shapes, and tiny random-init model folders built locally (no model hub needed).

Every preset keeps the released model's pattern (three GDN layers to one attention layer, K != V GDN head dims)
and uses head dims that vLLM's CPU attention accepts (32, 64, 80, 96, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, OlmoHybridConfig

from hyrl.model.tokenizer import save_tokenizer, train_tokenizer

PRESETS: dict[str, dict] = {
    # ~0.2M parameters: CI-sized; every test and the default recipes use it.
    "tiny": dict(
        hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
        linear_num_key_heads=2, linear_key_head_dim=32, linear_value_head_dim=64, max_position_embeddings=2048,
    ),
    # ~6M parameters: still runs on a laptop CPU, learns the synthetic tasks properly.
    "small": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
        linear_num_key_heads=4, linear_key_head_dim=64, linear_value_head_dim=128, max_position_embeddings=4096,
    ),
    # The released allenai/Olmo-Hybrid-7B shape (build on the meta device; for benchmarks and sizing).
    "olmo-hybrid-7b": dict(
        vocab_size=100352, hidden_size=3840, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=30,
        num_key_value_heads=30, linear_num_key_heads=30, linear_key_head_dim=96, linear_value_head_dim=192,
        max_position_embeddings=65536,
    ),
}


def preset_config(preset: str, **overrides) -> OlmoHybridConfig:
    """The ``OlmoHybridConfig`` of a named preset, with field overrides (e.g. ``vocab_size``)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}")
    return OlmoHybridConfig(**{**PRESETS[preset], **overrides})


def build_tiny_model(
    out_dir: Path, *, preset: str = "tiny", seed: int = 0, vocab_size: int = 512, implementation: str = "hyrl"
) -> Path:
    """Write a random-init Olmo Hybrid (fp32) and a locally trained tokenizer to ``out_dir`` as an HF folder.

    The tokenizer is trained on text from hyrl's task families, so tiny models see short token sequences.
    Building is deterministic in ``seed``.
    """
    from hyrl.model.loading import new_causal_lm, save_causal_lm
    from hyrl.tasks import all_task_text

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(all_task_text(), vocab_size=vocab_size)
    config = preset_config(
        preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = new_causal_lm(config, implementation).float()
    save_causal_lm(model, out_dir)
    GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    ).save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    return out_dir


def build_tiny_dense_model(out_dir: Path, *, preset: str = "tiny", seed: int = 0, num_hidden_layers: int | None = None,
                           vocab_size: int = 512) -> Path:
    """A dense transformer (Llama architecture: every layer attention) matching a hybrid preset's widths, with the
    same locally trained tokenizer: the dense baseline for memory/throughput, and a teacher for distillation tests.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyrl.tasks import all_task_text

    out_dir = Path(out_dir)
    p = PRESETS[preset]
    tokenizer = train_tokenizer(all_task_text(), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=num_hidden_layers or p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"], max_position_embeddings=p["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).float().save_pretrained(str(out_dir))
    GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    ).save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    return out_dir
