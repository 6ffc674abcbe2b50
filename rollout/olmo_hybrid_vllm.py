"""hyrl's Olmo Hybrid for vLLM: transformers' OlmoHybridForCausalLM layer by layer, with hyrl's GDN.

Shapes: T tokens in the engine step (all requests packed), D model dim.

Why our own model class instead of vLLM's ``OlmoHybridForCausalLM`` (0.32): its GDN runs Triton kernels only (on CPU:
``module 'triton' has no attribute 'set_allocator'``), its fused conv1d loader fails (``list indices must be
integers or slices, not NoneType``), it keeps the recurrent state in the model dtype unless told otherwise, and it
wraps the whole GDN layer in one op. Here parameter names equal the HF checkpoint's, the state is fp32 by default
(``gdn_layer.gdn_state_dtypes``) and only the stateful recurrence is opaque to the compiler.

Chain of equalities the tests check: learner forward (HF, fp32) == this model's prefill + decode log-probs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateCopyFuncCalculator
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.sequence import IntermediateTensors

from hyrl.rollout.gdn_layer import HyrlGatedDeltaNet, gdn_state_dtypes, gdn_state_shapes

# Renames of older / OLMo-core style checkpoints (same list as transformers' conversion mapping for olmo_hybrid).
_RENAMES = (("attention_layer_norm", "input_layernorm"), ("feedforward_layer_norm", "post_attention_layernorm"))
_SPLIT_CONV = re.compile(r"(.*\.linear_attn)\.([qkv])_conv1d\.weight$")


class HyrlAttention(nn.Module):
    """Olmo-3 attention: q/k RMSNorm over all heads, optional RoPE (released checkpoints use none)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        self.tp, self.tp_rank = tp, get_tensor_model_parallel_rank()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
        hd = getattr(config, "head_dim", None) or config.hidden_size // heads
        d, quant, bias = config.hidden_size, vllm_config.quant_config, bool(getattr(config, "attention_bias", False))
        self.q_proj = ColumnParallelLinear(d, heads * hd, bias=bias, quant_config=quant, prefix=f"{prefix}.q_proj")
        self.k_proj = ColumnParallelLinear(d, kv_heads * hd, bias=bias, quant_config=quant, prefix=f"{prefix}.k_proj")
        self.v_proj = ColumnParallelLinear(d, kv_heads * hd, bias=bias, quant_config=quant, prefix=f"{prefix}.v_proj")
        self.o_proj = RowParallelLinear(heads * hd, d, bias=bias, input_is_parallel=True, quant_config=quant,
                                        prefix=f"{prefix}.o_proj")
        self.q_norm = RMSNorm(heads * hd, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(kv_heads * hd, eps=config.rms_norm_eps)
        rope = getattr(config, "rope_parameters", None)
        self.rotary_emb = None
        if rope is not None and rope.get("rope_theta") is not None:
            self.rotary_emb = get_rope(hd, max_position=config.max_position_embeddings, rope_parameters=rope)
        self.attn = Attention(heads // tp, hd, hd**-0.5, num_kv_heads=max(1, kv_heads // tp),
                              cache_config=vllm_config.cache_config, quant_config=quant, prefix=f"{prefix}.attn")

    def _norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm over the full (all-rank) head dim, as in the learner."""
        if self.tp == 1:
            return norm(x)
        full = norm(tensor_model_parallel_all_gather(x.contiguous()))
        return full.chunk(self.tp, dim=-1)[self.tp_rank]

    def forward(self, positions: torch.Tensor, x_TD: torch.Tensor) -> torch.Tensor:
        q = self._norm(self.q_norm, self.q_proj(x_TD)[0])
        k = self._norm(self.k_norm, self.k_proj(x_TD)[0])
        v = self.v_proj(x_TD)[0]
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))[0]


class HyrlMLP(nn.Module):
    """SwiGLU with HF's separate gate/up projections: down(silu(gate(x)) * up(x))."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        d, m, quant = config.hidden_size, config.intermediate_size, vllm_config.quant_config
        self.gate_proj = ColumnParallelLinear(d, m, bias=False, quant_config=quant, prefix=f"{prefix}.gate_proj")
        self.up_proj = ColumnParallelLinear(d, m, bias=False, quant_config=quant, prefix=f"{prefix}.up_proj")
        self.down_proj = RowParallelLinear(m, d, bias=False, quant_config=quant, prefix=f"{prefix}.down_proj")

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_TD)[0]) * self.up_proj(x_TD)[0])[0]


class HyrlDecoderLayer(nn.Module):
    """GDN layers: pre-norm; attention layers: Olmo-3 post-norms (as transformers' two decoder layer classes)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str, layer_idx: int) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.is_gdn = config.layer_types[layer_idx] == "linear_attention"
        if self.is_gdn:
            self.linear_attn = HyrlGatedDeltaNet(config, vllm_config, prefix=f"{prefix}.linear_attn")
            self.input_layernorm = RMSNorm(config.hidden_size, eps=eps)
        else:
            self.self_attn = HyrlAttention(config, vllm_config, prefix=f"{prefix}.self_attn")
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=eps)
        self.mlp = HyrlMLP(config, vllm_config, prefix=f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, h_TD: torch.Tensor) -> torch.Tensor:
        if self.is_gdn:
            h_TD = h_TD + self.linear_attn(self.input_layernorm(h_TD))
            return h_TD + self.mlp(self.post_attention_layernorm(h_TD))
        h_TD = h_TD + self.post_attention_layernorm(self.self_attn(positions, h_TD))
        return h_TD + self.post_feedforward_layernorm(self.mlp(h_TD))


@support_torch_compile(
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "intermediate_tensors": 0, "inputs_embeds": 0}
)
class HyrlOlmoHybridModel(nn.Module):
    """Embedding, decoder stack, final norm (no pipeline parallelism)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
        )
        self.layers = nn.ModuleList(
            HyrlDecoderLayer(config, vllm_config, f"{prefix}.layers.{i}", i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h_TD = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        for layer in self.layers:
            h_TD = layer(positions, h_TD)
        return self.norm(h_TD)


class HyrlOlmoHybridForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """vLLM entry class for ``olmo_hybrid`` checkpoints (registered by ``hyrl.rollout.vllm_plugin``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise NotImplementedError("hyrl's Olmo Hybrid supports tensor parallelism only, not pipeline parallelism")
        self.config = config
        self.model = HyrlOlmoHybridModel(vllm_config=vllm_config, prefix="model")
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config,
                                      prefix="lm_head")
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    # --- mamba cache description (read by the engine before the model exists) ---
    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, torch.dtype]:
        return gdn_state_dtypes(vllm_config.model_config.dtype, vllm_config.cache_config)

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if vllm_config.speculative_config is not None:
            raise NotImplementedError("hyrl's Olmo Hybrid does not support speculative decoding")
        return gdn_state_shapes(vllm_config.model_config.hf_config, vllm_config.parallel_config.tensor_parallel_size)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.gated_delta_net_state_copy_func()

    # --- weights ---
    def normalize_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """HF-format tensors under this model's names: old norm names renamed, ``{q,k,v}_conv1d`` re-fused.

        transformers 5.19 saves the fused conv as three equal thirds (wrong split when key dim != value dim);
        concatenating the pieces in q, k, v order restores the fused tensor whichever split was written.
        """
        out: list[tuple[str, torch.Tensor]] = []
        conv_parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in weights:
            for old, new in _RENAMES:
                name = name.replace(old, new)
            if "rotary_emb." in name or (self.config.tie_word_embeddings and name == "lm_head.weight"):
                continue
            split = _SPLIT_CONV.match(name)
            if split:
                conv_parts.setdefault(split.group(1), {})[split.group(2)] = tensor
            else:
                out.append((name, tensor))
        for layer, parts in conv_parts.items():
            if set(parts) != {"q", "k", "v"}:
                raise ValueError(f"{layer}: got conv1d pieces {sorted(parts)}, need q, k and v")
            out.append((f"{layer}.conv1d.weight", torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)))
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF-named tensors; the first (checkpoint) load records ``checkpoint_shapes`` for later updates."""
        params = dict(self.named_parameters())
        loaded: dict[str, tuple[int, ...]] = {}
        for name, tensor in self.normalize_weights(weights):
            if name not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no parameter in hyrl's Olmo Hybrid")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded[name] = tuple(tensor.shape)
        if not getattr(self, "checkpoint_shapes", None):
            self.checkpoint_shapes = loaded
        return set(loaded)
