"""hyrl's Olmo Hybrid: the learner model, in plain PyTorch, configured by transformers' ``OlmoHybridConfig``.

Shapes: B batch, T tokens (new this call), S key positions, D model dim, N documents of a packed batch.

Why hyrl owns the model: prime-rl measured a 0.23 learner-vs-vLLM mismatch KL because HF's Qwen3.5 GDN silently
dropped ``cu_seqlens`` on packed batches. Here packing is first class: ``cu_seqlens`` (or TRL's padding-free
``position_ids`` that restart at 0) reaches the conv, the recurrence and the attention mask.

Parameter names equal transformers' ``OlmoHybridForCausalLM`` state-dict names, so ``from_pretrained`` reads a
transformers folder and ``save_pretrained`` (see ``hyrl.model.state_dict``) writes one transformers and vLLM read.

Chain of equalities the tests prove (fp32, <= 1e-5): hyrl forward == transformers forward (three configs: GQA,
K != V, RoPE on/off); packed forward == per-document forwards; chunk GDN == recurrent GDN; prefill + cached decode
== full forward. So a learner forward on packed rollouts scores exactly what a per-sequence decode generated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, OlmoHybridConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from hyrl.model.attention import Attention, RMSNorm, attention_mask_BTS, rope_cos_sin, uses_rope
from hyrl.model.cache import HybridCache
from hyrl.model.gdn import BACKENDS, GatedDeltaNet, gdn_decay_init, position_in_document
from hyrl.model.state_dict import (
    CONV_PARTS,
    HF_SAVED_RENAMES,
    from_hf_state_dict,
    register_hf_conversion,
    to_hf_state_dict,
)


@dataclass
class ForwardContext:
    """What every layer of one forward shares: masks, RoPE tables, packing bounds, cache."""

    padding_BT: torch.Tensor | None
    mask_B1TS: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None
    cu_seqlens: torch.Tensor | None
    cache: HybridCache | None


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: OlmoHybridConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class GDNDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + GDN(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: OlmoHybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.linear_attn = GatedDeltaNet(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        cache = ctx.cache
        state = cache.gdn.get(self.layer_idx) if cache is not None else None
        mixed_BTD, conv_BCW, state_BHKV = self.linear_attn(
            self.input_layernorm(x_BTD), mask_BT=ctx.padding_BT, cu_seqlens=ctx.cu_seqlens, state=state
        )
        if cache is not None:
            cache.set_gdn(self.layer_idx, conv_BCW, state_BHKV)
        x_BTD = x_BTD + mixed_BTD
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))


class AttentionDecoderLayer(GradientCheckpointingLayer):
    """Olmo-3 post-norm block: x + norm(attn(x)), then x + norm(MLP(x))."""

    def __init__(self, config: OlmoHybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        attn_BTD = self.self_attn(x_BTD, mask_B1TS=ctx.mask_B1TS, rope=ctx.rope, cache=ctx.cache)
        x_BTD = x_BTD + self.post_attention_layernorm(attn_BTD)
        return x_BTD + self.post_feedforward_layernorm(self.mlp(x_BTD))


class HybridPreTrainedModel(PreTrainedModel):
    """HF plumbing: config class, init, gradient checkpointing, (de)serialisation."""

    config_class = OlmoHybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # attention always runs through F.scaled_dot_product_attention
    _no_split_modules: ClassVar[list[str]] = ["GDNDecoderLayer", "AttentionDecoderLayer"]
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^mtp.*"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GatedDeltaNet):
            A_log_H, dt_bias_H = gdn_decay_init(self.config, device=module.A_log.device)
            init.copy_(module.A_log, A_log_H)  # init.copy_ skips parameters already loaded from a checkpoint
            init.copy_(module.dt_bias, dt_bias_H)


def cu_seqlens_from_position_ids(position_ids_1T: torch.Tensor) -> torch.Tensor | None:
    """TRL padding-free batches restart ``position_ids`` at 0 for each document: turn the restarts into cu_seqlens."""
    starts = (position_ids_1T[0] == 0).nonzero().flatten()
    if starts.numel() <= 1 or int(starts[0]) != 0:
        return None
    total = torch.tensor([position_ids_1T.shape[1]], device=starts.device)
    return torch.cat([starts, total]).to(torch.int32)


class HybridModel(nn.Module):
    """Embedding, the hybrid stack (``config.layer_types``) and the final norm; returns the last hidden state."""

    def __init__(self, config: OlmoHybridConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            GDNDecoderLayer(config, i) if kind == "linear_attention" else AttentionDecoderLayer(config, i)
            for i, kind in enumerate(config.layer_types)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast:
        """Right/left-padded batches take ``attention_mask`` [B, past + T]; packed ones ``cu_seqlens`` with B == 1.

        ``cu_seq_lens_q`` is the flash-attention name TRL's padding-free collator uses for ``cu_seqlens``; its twins
        (``cu_seq_lens_k``, ``max_length_q/k``, ``seq_idx``) say nothing more for self-attention and are ignored.
        """
        cu_seqlens = cu_seqlens if cu_seqlens is not None else cu_seq_lens_q
        x_BTD = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = HybridCache.from_config(self.config)
        ctx = self._context(x_BTD, attention_mask, position_ids, cu_seqlens, cache)
        for layer in self.layers:
            x_BTD = layer(x_BTD, ctx=ctx)
        if cache is not None:
            cache.seen_tokens += x_BTD.shape[1]
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x_BTD), past_key_values=cache)

    def _context(
        self,
        x_BTD: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        cache: HybridCache | None,
    ) -> ForwardContext:
        B, T, _ = x_BTD.shape
        past = cache.seen_tokens if cache is not None else 0
        if cu_seqlens is None and position_ids is not None and B == 1 and cache is None:
            cu_seqlens = cu_seqlens_from_position_ids(position_ids)
        if cu_seqlens is not None and (B != 1 or cache is not None):
            raise ValueError("cu_seqlens needs a packed batch (B == 1) and no cache")
        if position_ids is None and cu_seqlens is not None:
            position_ids = position_in_document(cu_seqlens.to(x_BTD.device), T)[None]
        elif position_ids is None:
            position_ids = torch.arange(past, past + T, device=x_BTD.device)[None].expand(B, T)
        padding_BT = None
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            padding_BT = attention_mask[:, -T:]
        rope = rope_cos_sin(self.config, position_ids) if uses_rope(self.config) else None
        mask = attention_mask_BTS(T, past, attention_mask, cu_seqlens, x_BTD.device)
        return ForwardContext(padding_BT, mask, rope, cu_seqlens, cache)


STOCK_ARCHITECTURE = "OlmoHybridForCausalLM"  # what saved checkpoints name: transformers' and vLLM's class


class HybridForCausalLM(HybridPreTrainedModel, GenerationMixin):
    """The causal LM hyrl trains (SFT/DPO/GRPO via TRL) and pushes to vLLM; transformers' class is only an oracle."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: OlmoHybridConfig) -> None:
        super().__init__(config)
        self.model = HybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args, state_dict: dict | None = None, **kwargs
    ) -> None:
        """Write the released checkpoint layout (q/k/v conv split at key_dim, key_dim, value_dim; HF norm names).

        transformers' own reverse mapping would cut the conv into equal thirds (see ``hyrl.model.state_dict``), so it is
        turned off. Other arguments pass through unchanged to ``PreTrainedModel.save_pretrained`` (Trainer calls it).
        """
        sd = to_hf_state_dict(state_dict if state_dict is not None else self.state_dict(), self.config)
        super().save_pretrained(save_directory, *args, state_dict=sd, save_original_format=False, **kwargs)
        # transformers writes this class's name; the stock name lets transformers and vLLM load the folder without
        # hyrl (the weights are in the released layout already)
        config_file = Path(save_directory) / "config.json"
        if kwargs.get("is_main_process", True) and config_file.is_file():
            config = json.loads(config_file.read_text())
            config["architectures"] = [STOCK_ARCHITECTURE]
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accept the checkpoint-file layout that ``save_pretrained`` writes (split q/k/v convs).

        HF Trainer resumes by reading ``model.safetensors`` and calling ``load_state_dict(sd, strict=False)``;
        without this the split convs would be silently skipped and a resumed run would train stale conv weights.
        """
        if any(name.endswith(CONV_PARTS) or any(old in name for old in HF_SAVED_RENAMES) for name in state_dict):
            state_dict = from_hf_state_dict(dict(state_dict), self.config)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not hand us a DynamicCache: the GDN state lives in a HybridCache

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: HybridCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        **generate_state,  # generate()'s bookkeeping (cache_position, next_sequence_length, ...): not model inputs
    ) -> dict:
        """``generate()`` hook: feed only the tokens the cache has not seen; start a HybridCache on the first step."""
        cache = past_key_values
        if use_cache and cache is None:
            cache = HybridCache.from_config(self.config)
        if cache is not None:
            input_ids = input_ids[:, cache.seen_tokens :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache}

    def set_gdn_backend(self, backend: str) -> None:
        """Force every GDN layer onto one path: "auto" (default), "chunk" or "recurrent" (token loop)."""
        if backend not in BACKENDS:
            raise ValueError(f"GDN backend {backend!r} is not one of {BACKENDS}")
        for module in self.modules():
            if isinstance(module, GatedDeltaNet):
                module.backend = backend

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        past_key_values: HybridCache | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Logits for the last ``logits_to_keep`` positions (0 = all); ``loss`` (HF's shifted CE) when labels given.

        ``return_dict`` is accepted for HF/TRL call sites and ignored: the output is always ``CausalLMOutputWithPast``;
        ``past_key_values`` is HF's name for ``cache``; ``cu_seq_lens_q`` (TRL padding-free) for ``cu_seqlens``.
        """
        cache = cache if cache is not None else past_key_values
        cu_seqlens = cu_seqlens if cu_seqlens is not None else cu_seq_lens_q
        out = self.model(input_ids, attention_mask, position_ids, cu_seqlens, cache, inputs_embeds, use_cache)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(out.last_hidden_state[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, num_items_in_batch=num_items_in_batch
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)


register_hf_conversion(HybridForCausalLM.__name__)


def build_model(
    config: OlmoHybridConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> HybridForCausalLM:
    """A randomly initialised model (HF init); ``device="meta"`` builds shapes only, e.g. to count the 7B's params."""
    with torch.device(device):
        model = HybridForCausalLM(config)
    return model.to(dtype) if dtype is not None else model
