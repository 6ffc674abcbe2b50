"""The Olmo Hybrid Gated DeltaNet layer: projections, causal conv, gating, delta-rule core, gated RMSNorm.

Shapes: B batch, T tokens, D model dim, C conv channels (q | k | v, 2 * key_dim + value_dim), W conv kernel,
H GDN (value) heads, Hk GDN key heads, K/V GDN head dims, N documents of a packed batch.

Math (the same as transformers' ``OlmoHybridGatedDeltaNet``, which the parity tests use as the oracle):
    q, k, v = silu(causal_depthwise_conv([Wq x | Wk x | Wv x]))      (no bias, kernel W = 4)
    g = -exp(A_log) * softplus(Wa x + dt_bias),  beta = 2 * sigmoid(Wb x)  (beta in [0, 2] with allow_neg_eigval)
    o = GDN(l2norm(q), l2norm(k), v, g, beta);    out = Wo (RMSNorm(o) * silu(Wg x))   (norm per head, eps 1e-5)

Packed batches: ``cu_seqlens`` reaches both the conv (a token never reads an earlier document's inputs) and the
recurrence (the state restarts at every document), which is what HF's Qwen3.5 GDN dropped in prime-rl's 0.23 KL.

Core dispatch (one interface, three paths): CUDA tensors and hyrl's Triton kernels importable -> Triton;
otherwise ``chunk_gdn_torch`` for multi-token calls and the fp32 token-loop reference for decode. ``backend``
forces a path ("chunk", "recurrent") so tests can prove the paths agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import OlmoHybridConfig

from hyrl.kernels.gdn.reference import gdn_reference, upcast
from hyrl.kernels.gdn.torch_chunk import chunk_gdn_torch
from hyrl.model.cache import GDNLayerState

try:  # Triton kernels are optional: CPU machines and builds without them use the plain-PyTorch paths
    from hyrl.kernels.gdn.chunk import chunk_gdn as _triton_chunk
    from hyrl.kernels.gdn.recurrent import fused_recurrent_gdn as _triton_recurrent
except ImportError:
    _triton_chunk = _triton_recurrent = None

BACKENDS = ("auto", "chunk", "recurrent")


class GatedRMSNorm(nn.Module):
    """RMSNorm of the GDN output, then a SiLU gate (norm before gate), per head; fp32 statistics like HF/FLA."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x_NV: torch.Tensor, gate_NV: torch.Tensor) -> torch.Tensor:
        dtype = x_NV.dtype
        x32 = upcast(x_NV)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32.to(dtype) * F.silu(upcast(gate_NV))).to(dtype)


def position_in_document(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """For a packed batch, each token's offset from its document's first token: [T] long."""
    bounds = cu_seqlens.to(torch.long)
    lengths_N = bounds[1:] - bounds[:-1]
    starts_T = torch.repeat_interleave(bounds[:-1], lengths_N, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts_T


def causal_conv1d(
    x_BTC: torch.Tensor,
    weight_CW: torch.Tensor,
    conv_state_BCW: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv + SiLU, continuing from ``conv_state`` (the previous W - 1 inputs) when given.

    With ``cu_seqlens`` (packed, B == 1, no state) a tap that would read across a document start reads zero instead,
    exactly as if each document were convolved alone. Returns y_BTC and the new state [B, C, W - 1] (last inputs).
    """
    B, T, C = x_BTC.shape
    W = weight_CW.shape[-1]
    if conv_state_BCW is None:
        past_BWC = x_BTC.new_zeros(B, W - 1, C)
    elif cu_seqlens is not None:
        raise ValueError("a packed (cu_seqlens) batch cannot continue from a conv state")
    else:
        past_BWC = conv_state_BCW.transpose(1, 2).to(x_BTC.dtype)
    xp_BTC = torch.cat([past_BWC, x_BTC], dim=1).to(weight_CW.dtype)
    pos_T = position_in_document(cu_seqlens, T) if cu_seqlens is not None else None
    y_BTC = xp_BTC[:, W - 1 :] * weight_CW[:, W - 1]
    for lag in range(1, W):
        tap_BTC = xp_BTC[:, W - 1 - lag : W - 1 - lag + T] * weight_CW[:, W - 1 - lag]
        if pos_T is not None:
            tap_BTC = tap_BTC * (pos_T >= lag)[None, :, None]
        y_BTC = y_BTC + tap_BTC
    # a copy, not a view: a view would keep the whole [B, T + W - 1, C] input alive in the decode cache
    new_state_BCW = xp_BTC[:, -(W - 1) :].transpose(1, 2).to(x_BTC.dtype).clone(memory_format=torch.contiguous_format)
    return F.silu(y_BTC).to(x_BTC.dtype), new_state_BCW


def gdn_core(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    g_BTH: torch.Tensor,
    beta_BTH: torch.Tensor,
    *,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the delta-rule recurrence on the best available path; returns o_BTHV and the fp32 final state.

    q/k are L2-normalised inside the kernels (``use_qk_l2norm``); scale is K ** -0.5 on every path.
    """
    args = (q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH)
    T = q_BTHK.shape[1]
    use_triton = backend == "auto" and q_BTHK.is_cuda and _triton_chunk is not None
    if use_triton and T == 1 and cu_seqlens is None and initial_state is not None:
        state = initial_state.float().contiguous()  # the Triton decode kernel updates an fp32 state in place
        return _triton_recurrent(*args, state=state, use_qk_l2norm=True), state
    if use_triton:
        run = _triton_chunk
    elif backend == "recurrent" or (backend == "auto" and T == 1):
        run = gdn_reference
    else:
        run = chunk_gdn_torch
    o, final = run(
        *args, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens, use_qk_l2norm=True
    )
    return o, final


class GatedDeltaNet(nn.Module):
    """GDN token mixer with transformers' parameter names (q/k/v/a/b/g/o_proj, conv1d, A_log, dt_bias, o_norm)."""

    def __init__(self, config: OlmoHybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_k_heads = config.linear_num_value_heads, config.linear_num_key_heads
        self.head_k_dim, self.head_v_dim = config.linear_key_head_dim, config.linear_value_head_dim
        self.key_dim = self.head_k_dim * self.num_k_heads
        self.value_dim = self.head_v_dim * self.num_heads
        self.allow_neg_eigval = config.linear_allow_neg_eigval
        self.backend = "auto"
        D, conv_dim = config.hidden_size, 2 * self.key_dim + self.value_dim
        self.q_proj = nn.Linear(D, self.key_dim, bias=False)
        self.k_proj = nn.Linear(D, self.key_dim, bias=False)
        self.v_proj = nn.Linear(D, self.value_dim, bias=False)
        self.a_proj = nn.Linear(D, self.num_heads, bias=False)
        self.b_proj = nn.Linear(D, self.num_heads, bias=False)
        self.g_proj = nn.Linear(D, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, D, bias=False)
        W = config.linear_conv_kernel_dim
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=W, groups=conv_dim, bias=False, padding=W - 1)
        A_log_H, dt_bias_H = gdn_decay_init(config)
        self.A_log = nn.Parameter(A_log_H)
        self.dt_bias = nn.Parameter(dt_bias_H)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=1e-5)

    def forward(
        self,
        x_BTD: torch.Tensor,
        *,
        mask_BT: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        state: GDNLayerState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mix tokens; returns out_BTD, the new conv state and the new fp32 recurrent state.

        ``mask_BT`` (1 = real token) zeroes padded positions before the projections, as transformers does, so padding
        adds nothing to the conv window or the state. ``state`` continues a cached sequence.
        """
        if mask_BT is not None:
            x_BTD = x_BTD * mask_BT[:, :, None].to(x_BTD.dtype)
        B, T, _ = x_BTD.shape
        qkv_BTC = torch.cat([self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)], dim=-1)
        conv_state = state.conv_BCW if state is not None else None
        qkv_BTC, new_conv_BCW = causal_conv1d(qkv_BTC, self.conv1d.weight[:, 0], conv_state, cu_seqlens)
        q, k, v = qkv_BTC.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q_BTHK = q.reshape(B, T, self.num_k_heads, self.head_k_dim)
        k_BTHK = k.reshape(B, T, self.num_k_heads, self.head_k_dim)
        v_BTHV = v.reshape(B, T, self.num_heads, self.head_v_dim)
        if self.num_heads > self.num_k_heads:  # GVA: each key head serves a contiguous group of value heads
            q_BTHK = q_BTHK.repeat_interleave(self.num_heads // self.num_k_heads, dim=2)
            k_BTHK = k_BTHK.repeat_interleave(self.num_heads // self.num_k_heads, dim=2)
        beta_BTH = self.b_proj(x_BTD).sigmoid() * (2.0 if self.allow_neg_eigval else 1.0)
        g_BTH = -upcast(self.A_log).exp() * F.softplus(upcast(self.a_proj(x_BTD)) + self.dt_bias)
        o_BTHV, new_state_BHKV = gdn_core(
            q_BTHK,
            k_BTHK,
            v_BTHV,
            g_BTH,
            beta_BTH,
            initial_state=state.recurrent_BHKV if state is not None else None,
            cu_seqlens=cu_seqlens,
            backend=self.backend,
        )
        gate_BTHV = self.g_proj(x_BTD).reshape(B, T, self.num_heads, self.head_v_dim)
        o_BTHV = self.o_norm(o_BTHV, gate_BTHV)
        return self.o_proj(o_BTHV.reshape(B, T, self.value_dim)), new_conv_BCW, new_state_BHKV


@torch.no_grad()
def gdn_decay_init(config: OlmoHybridConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' init of the decay: A ~ U[a_log_min, a_log_max], dt log-uniform, dt_bias = softplus^-1(dt).

    Returns (A_log_H, dt_bias_H) in fp32.
    """
    H = config.linear_num_value_heads
    A_H = torch.empty(H, device=device).uniform_(config.linear_a_log_min, config.linear_a_log_max)
    log_lo, log_hi = math.log(config.linear_dt_min), math.log(config.linear_dt_max)
    dt_H = torch.exp(torch.rand(H, device=device) * (log_hi - log_lo) + log_lo).clamp(min=config.linear_dt_init_floor)
    return A_H.log(), dt_H + torch.log(-torch.expm1(-dt_H))
