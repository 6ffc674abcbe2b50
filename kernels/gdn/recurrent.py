"""Gated DeltaNet decode in Triton: a few tokens per sequence, updating an fp32 state cache in place.

Shapes: B sequences, T tokens each (1 for plain decode), H heads, K/V head dims, S cache rows.

Decode is bound by state traffic (each step reads and writes the whole [H, K, V] fp32 state of every sequence), so
one program owns a [K, BV] column block of one (sequence, head) state, keeps it in registers for all T steps and
writes it back once. The cache stays fp32: a bf16 state drifts from the training forward over long rollouts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.heuristics({"USE_INDICES": lambda args: args["state_indices"] is not None})
@triton.jit
def _fused_recurrent_kernel(q, k, v, g, beta, o, state, state_indices, scale, T, stride_s, H: tl.constexpr,
                            K: tl.constexpr,
                            V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_QK_L2NORM: tl.constexpr,
                            USE_INDICES: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_s = tl.load(state_indices + i_b).to(tl.int64) if USE_INDICES else i_b.to(tl.int64)  # cache row
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_s = state + i_s * stride_s + i_h * K * V + o_k[:, None] * V + o_v[None, :]
    m_s = m_k[:, None] & m_v[None, :]
    b_h = tl.load(p_s, mask=m_s, other=0)
    for t in range(T):
        i_x = (i_b * T + t) * H + i_h
        b_q = tl.load(q + i_x * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(k + i_x * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(v + i_x * V + o_v, mask=m_v, other=0).to(tl.float32)
        b_g = tl.load(g + i_x).to(tl.float32)
        b_b = tl.load(beta + i_x).to(tl.float32)
        if USE_QK_L2NORM:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
        b_h = b_h * tl.exp(b_g)
        b_e = (b_v - tl.sum(b_h * b_k[:, None], 0)) * b_b
        b_h = b_h + b_k[:, None] * b_e[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0) * scale
        tl.store(o + i_x * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    tl.store(p_s, b_h, mask=m_s)


def fused_recurrent_gdn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    state: torch.Tensor,
    state_indices: torch.Tensor | None = None,
    scale: float | None = None,
    use_qk_l2norm: bool = False,
) -> torch.Tensor:
    """Run T decode steps per sequence and update ``state`` in place; no autograd.

    Args: q_BTHK, k_BTHK, v_BTHV, g_BTH log decay, beta_BTH; state [S, H, K, V] fp32 cache; state_indices [B] int,
    the cache row of each sequence (rows 0..B-1 when None). Returns o_BTHV in the dtype of v.
    Same recurrence as ``gdn_reference`` with that row as the initial state and the new state written back.
    The cache rows may be strided (a view into larger per-slot pages, as vLLM keeps them) as long as each row's
    [H, K, V] block is contiguous.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if state.dtype != torch.float32 or state[0].stride() != (K * V, V, 1):
        raise ValueError("state must be an fp32 cache [S, H, K, V] whose rows are contiguous [H, K, V] blocks")
    if tuple(state.shape[1:]) != (H, K, V):
        raise ValueError(f"state must be [S, {H}, {K}, {V}], got {tuple(state.shape)}")
    if state_indices is None and state.shape[0] < B:
        raise ValueError(f"state has {state.shape[0]} rows for a batch of {B}")
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    o = torch.empty_like(v)
    BK = triton.next_power_of_2(K)
    # narrow V blocks give more programs when the batch is small; 32 keeps each program's loads 128 bytes wide
    BV = min(triton.next_power_of_2(V), 32 if B * H >= 256 else 16)
    indices = None if state_indices is None else state_indices.to(device=q.device, dtype=torch.int32).contiguous()
    _fused_recurrent_kernel[(triton.cdiv(V, BV), B * H)](q, k, v, g, beta, o, state, indices, scale, T,
                                                        state.stride(0), H=H, K=K, V=V, BK=BK, BV=BV,
                                                        USE_QK_L2NORM=use_qk_l2norm, num_warps=4)
    return o
