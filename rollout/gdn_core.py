"""The stateful half of a Gated DeltaNet layer inside vLLM: causal conv1d + gating + recurrence over paged state.

Shapes: T tokens in the step (all requests packed), N requests, C conv channels (2 * key_dim + value_dim),
W conv width, H value heads, K / V GDN head dims, S state slots of the engine's mamba cache.

This is the only code of the rollout model that must see vLLM's per-step metadata (which request owns which
tokens and which state slot), so it runs as one opaque custom op (``torch.ops.vllm.hyrl_gdn_core``): everything
around it (projections, gated norm, MLP, attention) can be compiled and graph-captured, while the recurrence keeps
its eager, learner-identical arithmetic. The math is the learner's (transformers / ``hyrl.model``):
    conv:  x_t = silu(sum_w W_cw x_{t-W+1+w})                   (depthwise, no bias, state = last W-1 inputs)
    gates: g = -exp(A_log) * softplus(a + dt_bias) (fp32),  beta = sigmoid(b) (x2 when allow_neg_eigval)
    GDN:   q, k L2-normed; the delta rule of ``hyrl.kernels.gdn.reference`` in fp32.
The recurrent state is stored in the cache dtype (fp32 by default: a bf16 state drifts, measured: 0.22
log-prob error between a bf16 full forward and cached decode on the tiny model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hyrl.kernels.gdn.reference import gdn_reference, l2norm

try:  # plain-torch chunked GDN (faster prefill); same contract as the reference
    from hyrl.kernels.gdn.torch_chunk import chunk_gdn_torch as _chunk_cpu
except ImportError:  # pragma: no cover - the reference is always there
    _chunk_cpu = None


def _chunk_kernel(device: torch.device):
    """Prefill kernel: Triton chunk on CUDA when present, else plain-torch chunk, else the sequential reference."""
    if device.type == "cuda":
        try:
            from hyrl.kernels.gdn.chunk import chunk_gdn

            return chunk_gdn
        except ImportError:
            pass
    return _chunk_cpu or gdn_reference


def gdn_gates(
    a_TH: torch.Tensor, b_TH: torch.Tensor, A_log_H: torch.Tensor, dt_bias_H: torch.Tensor, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log decay g (fp32) and beta exactly as transformers' OlmoHybridGatedDeltaNet computes them."""
    beta_TH = b_TH.sigmoid()
    if allow_neg_eigval:
        beta_TH = beta_TH * 2.0
    g_TH = -A_log_H.float().exp() * F.softplus(a_TH.float() + dt_bias_H)
    return g_TH, beta_TH


def conv_prefill(
    x_TC: torch.Tensor,
    weight_CW: torch.Tensor,
    conv_SCw: torch.Tensor,
    cu_seqlens: list[int],
    slots: list[int],
    has_init: list[bool],
) -> torch.Tensor:
    """Causal depthwise conv + SiLU per request; reads and updates each request's last W-1 inputs in ``conv_SCw``."""
    width = weight_CW.shape[1]
    out_TC = torch.empty_like(x_TC)
    for start, end, slot, init in zip(cu_seqlens[:-1], cu_seqlens[1:], slots, has_init):
        x_CT = x_TC[start:end].t().to(weight_CW.dtype)
        prev_Cw = conv_SCw[slot].to(x_CT.dtype) if init else x_CT.new_zeros(x_CT.shape[0], width - 1)
        xx_CT = torch.cat([prev_Cw, x_CT], dim=-1)
        conv_SCw[slot] = xx_CT[:, -(width - 1) :].to(conv_SCw.dtype)
        y_CT = F.conv1d(xx_CT[None], weight_CW[:, None, :], groups=xx_CT.shape[0])[0]
        out_TC[start:end] = F.silu(y_CT).t().to(out_TC.dtype)
    return out_TC


def conv_decode(
    x_NC: torch.Tensor, weight_CW: torch.Tensor, conv_SCw: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """One token per request: the same conv as ``conv_prefill`` over [state, x], batched over requests."""
    width = weight_CW.shape[1]
    xx_NCW = torch.cat([conv_SCw[slots].to(weight_CW.dtype), x_NC.to(weight_CW.dtype)[:, :, None]], dim=-1)
    conv_SCw[slots] = xx_NCW[:, :, -(width - 1) :].to(conv_SCw.dtype)
    y_NC1 = F.conv1d(xx_NCW, weight_CW[:, None, :], groups=xx_NCW.shape[1])
    return F.silu(y_NC1[:, :, 0]).to(x_NC.dtype)


def gdn_step(
    q_NHK: torch.Tensor,
    k_NHK: torch.Tensor,
    v_NHV: torch.Tensor,
    g_NH: torch.Tensor,
    beta_NH: torch.Tensor,
    state_SHKV: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """One delta-rule step per request (fp32, same formula and order as ``gdn_reference``); state updated in place."""
    if q_NHK.is_cuda and _fused_recurrent() is not None:
        return _step_cuda(q_NHK, k_NHK, v_NHV, g_NH, beta_NH, state_SHKV, slots)
    scale = q_NHK.shape[-1] ** -0.5
    q, k, v, g, beta = (x.float() for x in (q_NHK, k_NHK, v_NHV, g_NH, beta_NH))
    q, k = l2norm(q), l2norm(k)
    S_NHKV = state_SHKV[slots].float() * g.exp()[:, :, None, None]
    v_err_NHV = v - torch.einsum("nhkv,nhk->nhv", S_NHKV, k)
    S_NHKV = S_NHKV + torch.einsum("nhk,nhv->nhkv", k, beta[:, :, None] * v_err_NHV)
    o_NHV = torch.einsum("nhkv,nhk->nhv", S_NHKV, q * scale)
    state_SHKV[slots] = S_NHKV.to(state_SHKV.dtype)
    return o_NHV.to(v_NHV.dtype)


def _fused_recurrent():
    try:
        from hyrl.kernels.gdn.recurrent import fused_recurrent_gdn

        return fused_recurrent_gdn
    except ImportError:
        return None


def _step_cuda(q_NHK, k_NHK, v_NHV, g_NH, beta_NH, state_SHKV: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Triton decode step. The kernel wants a contiguous fp32 cache; vLLM's per-layer state is a strided view into
    shared pages (conv and recurrent state interleaved per slot), so unless it is contiguous the rows are gathered
    into a contiguous fp32 scratch and written back (one extra state read+write; removable once the kernel takes a
    row stride)."""
    kernel = _fused_recurrent()
    args = (q_NHK[:, None], k_NHK[:, None], v_NHV[:, None], g_NH[:, None].float(), beta_NH[:, None].float())
    if state_SHKV.dtype == torch.float32 and state_SHKV.is_contiguous():
        return kernel(*args, state=state_SHKV, state_indices=slots, use_qk_l2norm=True)[:, 0]
    scratch = state_SHKV[slots].float().contiguous()
    o = kernel(*args, state=scratch, use_qk_l2norm=True)[:, 0]
    state_SHKV[slots] = scratch.to(state_SHKV.dtype)
    return o


def gdn_prefill(
    q_THK: torch.Tensor,
    k_THK: torch.Tensor,
    v_THV: torch.Tensor,
    g_TH: torch.Tensor,
    beta_TH: torch.Tensor,
    state_SHKV: torch.Tensor,
    cu_seqlens: torch.Tensor,
    slots: torch.Tensor,
    has_init: torch.Tensor,
) -> torch.Tensor:
    """Packed variable-length GDN over a mixed batch; each request starts from its cached state (or zeros)."""
    init_NHKV = state_SHKV[slots].float()
    init_NHKV[~has_init] = 0.0
    kernel = _chunk_kernel(q_THK.device)
    o_1THV, final_NHKV = kernel(
        q_THK[None], k_THK[None], v_THV[None], g_TH[None], beta_TH[None],
        initial_state=init_NHKV, output_final_state=True, cu_seqlens=cu_seqlens, use_qk_l2norm=True,
    )
    state_SHKV[slots] = final_NHKV.to(state_SHKV.dtype)
    return o_1THV[0]
