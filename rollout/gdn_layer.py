"""hyrl's Gated DeltaNet mixer as a vLLM layer: parameter names and math of transformers' OlmoHybridGatedDeltaNet.

Shapes: T tokens in the engine step, D model dim, C conv channels, H GDN value heads (per TP rank), K / V head dims.

The projections, gated RMSNorm and o_proj are ordinary (compilable) torch code; the conv + recurrence over the
paged state is one opaque custom op, ``torch.ops.vllm.hyrl_gdn_core`` (see ``hyrl.rollout.gdn_core``). The plugin
adds that op to vLLM's splitting ops, so piecewise CUDA graphs cut around it and the rest is captured.

Parameter names equal the HF checkpoint's (``q_proj``, ``conv1d`` fused [C, 1, W], ``A_log``, ...), so the learner's
``named_parameters()`` load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator, is_conv_state_dim_first
from vllm.model_executor.model_loader.weight_utils import sharded_weight_loader
from vllm.model_executor.utils import set_weight_attrs
from vllm.utils.torch_utils import direct_register_custom_op
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from hyrl.rollout import gdn_core

GDN_OP = "vllm::hyrl_gdn_core"


def gdn_state_shapes(config, tp_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv state, recurrent state) shapes per slot; the recurrent state is [H, K, V] (hyrl's layout)."""
    conv_shape, _ = MambaStateShapeCalculator.gated_delta_net_state_shape(
        tp_size, config.linear_num_key_heads, config.linear_num_value_heads, config.linear_key_head_dim,
        config.linear_value_head_dim, config.linear_conv_kernel_dim,
    )
    heads = config.linear_num_value_heads // tp_size
    return conv_shape, (heads, config.linear_key_head_dim, config.linear_value_head_dim)


def gdn_state_dtypes(model_dtype: torch.dtype, cache_config) -> tuple[torch.dtype, torch.dtype]:
    """Conv state in the model dtype; recurrent state fp32 unless ``mamba_ssm_cache_dtype`` names another dtype."""
    ssm = cache_config.mamba_ssm_cache_dtype
    ssm_dtype = torch.float32 if ssm in (None, "auto") else getattr(torch, ssm)
    conv = cache_config.mamba_cache_dtype
    conv_dtype = model_dtype if conv in (None, "auto") else getattr(torch, conv)
    return conv_dtype, ssm_dtype


class _Conv1dWeight(nn.Module):
    """Holds ``conv1d.weight`` [C, 1, W] (HF's fused q|k|v depthwise conv); TP shards each of q, k, v separately."""

    def __init__(self, dims: list[int], width: int, tp_size: int, tp_rank: int) -> None:
        super().__init__()
        self.dims, self.tp_size, self.tp_rank = dims, tp_size, tp_rank
        self.weight = nn.Parameter(torch.empty(sum(dims) // tp_size, 1, width), requires_grad=False)
        set_weight_attrs(self.weight, {"weight_loader": self.load})

    def load(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        """Copy the full fused weight [C, 1, W] (or [C, W]) into this rank's q, k and v channel slices."""
        loaded = loaded.reshape(loaded.shape[0], 1, -1)
        src, dst = 0, 0
        for dim in self.dims:
            shard = dim // self.tp_size
            part = loaded[src + self.tp_rank * shard : src + (self.tp_rank + 1) * shard]
            param.data[dst : dst + shard].copy_(part)
            src, dst = src + dim, dst + shard


class _GatedRMSNorm(nn.Module):
    """transformers' OlmoHybridRMSNormGated (norm before gate, SiLU gate, fp32 statistics)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * x32.to(dtype)
        return (y * F.silu(gate.float())).to(dtype)


class HyrlGatedDeltaNet(nn.Module, MambaBase):
    """One GDN mixer: hidden [T, D] -> [T, D], state in the engine's mamba cache (``self.kv_cache``)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.prefix, self.config = prefix, config
        self.model_dtype, self.cache_config = vllm_config.model_config.dtype, vllm_config.cache_config
        tp_size, tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
        self.tp_size = tp_size
        self.head_k, self.head_v = config.linear_key_head_dim, config.linear_value_head_dim
        self.k_heads = config.linear_num_key_heads // tp_size
        self.v_heads = config.linear_num_value_heads // tp_size
        key_dim, value_dim = self.head_k * config.linear_num_key_heads, self.head_v * config.linear_num_value_heads
        self.allow_neg_eigval = bool(getattr(config, "linear_allow_neg_eigval", False))
        d, quant = config.hidden_size, vllm_config.quant_config

        def col(name: str, out: int) -> ColumnParallelLinear:
            return ColumnParallelLinear(d, out, bias=False, quant_config=quant, prefix=f"{prefix}.{name}")

        self.q_proj, self.k_proj, self.v_proj = col("q_proj", key_dim), col("k_proj", key_dim), col("v_proj", value_dim)
        self.g_proj = col("g_proj", value_dim)
        heads = config.linear_num_value_heads
        self.a_proj, self.b_proj = col("a_proj", heads), col("b_proj", heads)
        self.conv1d = _Conv1dWeight([key_dim, key_dim, value_dim], config.linear_conv_kernel_dim, tp_size, tp_rank)
        # fp32 whatever the model dtype: the decay exp(-exp(A_log) * softplus(a + dt_bias)) compounds over every token
        self.A_log = nn.Parameter(torch.empty(self.v_heads, dtype=torch.float32), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.ones(self.v_heads, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(self.A_log, {"weight_loader": sharded_weight_loader(0)})
        set_weight_attrs(self.dt_bias, {"weight_loader": sharded_weight_loader(0)})
        self.o_norm = _GatedRMSNorm(self.head_v, eps=1e-5)  # FLA's FusedRMSNormGated default, as in transformers
        self.o_proj = RowParallelLinear(value_dim, d, bias=False, input_is_parallel=True, quant_config=quant,
                                        prefix=f"{prefix}.o_proj")
        context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate layer name: {prefix}")
        context[prefix] = self

    # --- MambaBase: what the engine allocates for this layer ---
    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.GDN_ATTN

    def get_state_shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return gdn_state_shapes(self.config, self.tp_size)

    def get_state_dtype(self) -> tuple[torch.dtype, torch.dtype]:
        return gdn_state_dtypes(self.model_dtype, self.cache_config)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        """Projections -> opaque stateful core -> gated norm -> o_proj."""
        T = x_TD.shape[0]
        mixed_TC = torch.cat([self.q_proj(x_TD)[0], self.k_proj(x_TD)[0], self.v_proj(x_TD)[0]], dim=-1)
        a_TH, b_TH = self.a_proj(x_TD)[0], self.b_proj(x_TD)[0]
        core_THV = torch.zeros(T, self.v_heads, self.head_v, dtype=x_TD.dtype, device=x_TD.device)
        torch.ops.vllm.hyrl_gdn_core(mixed_TC, a_TH, b_TH, core_THV, self.prefix)
        gate_THV = self.g_proj(x_TD)[0].view(T, self.v_heads, self.head_v)
        normed = self.o_norm(core_THV.reshape(-1, self.head_v), gate_THV.reshape(-1, self.head_v))
        return self.o_proj(normed.reshape(T, -1))[0]

    def core(self, mixed_TC: torch.Tensor, a_TH: torch.Tensor, b_TH: torch.Tensor, out_THV: torch.Tensor) -> None:
        """Conv + gates + delta rule for the requests of this step, reading/writing their cache slots."""
        md = get_forward_context().attn_metadata
        md = md.get(self.prefix) if isinstance(md, dict) else None
        if md is None:  # profile / warm-up runs carry no mamba metadata
            return
        if md.spec_sequence_masks is not None:
            raise NotImplementedError("hyrl's GDN layer does not support speculative decoding")
        conv_state, ssm_SHKV = self.kv_cache
        conv_SCw = conv_state if is_conv_state_dim_first() else conv_state.transpose(-1, -2)
        weight_CW = self.conv1d.weight[:, 0, :]
        n = md.num_actual_tokens
        x_TC, a_TH, b_TH = mixed_TC[:n], a_TH[:n], b_TH[:n]
        g_TH, beta_TH = gdn_core.gdn_gates(a_TH, b_TH, self.A_log, self.dt_bias, self.allow_neg_eigval)
        if md.num_prefills > 0:
            slots, cu = md.non_spec_state_indices_tensor, md.non_spec_query_start_loc
            has_init = md.has_initial_state
            x_TC = gdn_core.conv_prefill(x_TC, weight_CW, conv_SCw, cu.tolist(), slots.tolist(), has_init.tolist())
            q, k, v = self._heads(x_TC)
            o_THV = gdn_core.gdn_prefill(q, k, v, g_TH, beta_TH, ssm_SHKV, cu, slots, has_init)
        elif md.num_decodes > 0:
            # CUDA-graph padding marks unused rows with PAD_SLOT_ID (-1); send them to block 0, vLLM's null block
            slots = md.non_spec_state_indices_tensor[: md.num_decodes].clamp_min(0)
            x_TC = gdn_core.conv_decode(x_TC, weight_CW, conv_SCw, slots)
            q, k, v = self._heads(x_TC)
            o_THV = gdn_core.gdn_step(q, k, v, g_TH, beta_TH, ssm_SHKV, slots)
        else:
            return
        out_THV[:n] = o_THV.to(out_THV.dtype)

    def _heads(self, x_TC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split conv output into per-head q, k (repeated to the value heads, as transformers does) and v."""
        T, kd = x_TC.shape[0], self.k_heads * self.head_k
        q, k, v = torch.split(x_TC, [kd, kd, self.v_heads * self.head_v], dim=-1)
        q, k = q.reshape(T, self.k_heads, self.head_k), k.reshape(T, self.k_heads, self.head_k)
        if self.v_heads > self.k_heads:
            q = q.repeat_interleave(self.v_heads // self.k_heads, dim=1)
            k = k.repeat_interleave(self.v_heads // self.k_heads, dim=1)
        return q, k, v.reshape(T, self.v_heads, self.head_v)


def _gdn_core_op(mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, core_out: torch.Tensor,
                 layer_name: str) -> None:
    get_forward_context().no_compile_layers[layer_name].core(mixed_qkv, a, b, core_out)


def _gdn_core_fake(mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, core_out: torch.Tensor,
                   layer_name: str) -> None:
    return None


if not hasattr(torch.ops.vllm, "hyrl_gdn_core"):
    direct_register_custom_op("hyrl_gdn_core", _gdn_core_op, mutates_args=["core_out"], fake_impl=_gdn_core_fake)
