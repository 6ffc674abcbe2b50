"""Gated DeltaNet training kernels in Triton: chunked forward and backward as one ``torch.autograd.Function``.

Shapes: B batch, T tokens, H heads, K key/query head dim, V value head dim, N documents, C = 64 the chunk length,
NT the number of chunks over all documents. Internally every batch is packed into one row (``[1, B*T, ...]``) with
``cu_seqlens`` so equal-length and varlen inputs run the same kernels.

Algorithm, per document, head and chunk with state ``S`` at the chunk start (``gc`` the in-chunk cumulative sum of
``g``, ``D_ij = exp(gc_i - gc_j)``, ``A_ij = beta_i (k_i . k_j) D_ij`` for ``j < i``, ``T = (I + A)^-1``):
    W = T diag(beta exp(gc)) K,  U = T diag(beta) V              (the WY form of the chunk's delta rule)
    E = U - W S                                                  ("v_new": beta times each token's delta error)
    O = scale (diag(exp(gc)) Q S + (D o QK^T, causal) E)
    S' = exp(gc_last) S + K^T diag(exp(gc_last - gc)) E
The backward runs the chain in reverse, with dS' the gradient of the state after the chunk and P = D o dO E^T (causal):
    dE = scale (D o QK^T, causal)^T dO + diag(exp(gc_last - gc)) K dS'          (sequential over chunks, with dS:)
    dS = exp(gc_last) dS' + scale (diag(exp(gc)) Q)^T dO - W^T dE
    dQ = scale (diag(exp(gc)) dO S^T + P K),   dK = scale P^T Q + diag(exp(gc_last - gc)) E dS'^T,   dW = -dE S^T
    then through the WY form: dA = -Ai^T (dE (beta V)^T + dW (beta exp(gc) K)^T) Ai^T on the strictly lower part,
    d gc_i = q_i . dq_i - k_i . dk_i (+ the WY and last-row terms), and dg is the reverse in-chunk cumsum of d gc.
Unlike FLA, the forward keeps the per-chunk states ``S`` and ``E`` for the backward instead of recomputing them
(a sequential kernel and the W/U kernel fewer in the backward, at the cost of NT x H x K x V activation memory).

Why K is cut into slabs: Triton blocks are powers of two, and FLA pads K=96 to 128. The two sequential kernels (the
state recurrence forward and backward) keep the state as up to four [BK, BV] slabs with BK in {64, 32, 16} chosen to
waste the least, so K=96 runs as 3 x 32 with no padding; the parallel kernels loop over the same slabs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

CHUNK = 64

# Launch settings per kernel (num_warps, num_stages), from ``bench/gdn.py --sweep`` on an H200 and checked on an H100
# (docs/perf.md). A plain dict so the sweep can change them: Triton's autotuner does not run under the interpreter.
LAUNCH: dict[str, dict[str, int]] = {
    "solve": {"num_warps": 2, "num_stages": 2},
    "wu": {"num_warps": 4, "num_stages": 3},
    "h": {"num_warps": 4, "num_stages": 3},
    "o": {"num_warps": 8, "num_stages": 3},
    "dv_local": {"num_warps": 4, "num_stages": 3},
    "dh": {"num_warps": 4, "num_stages": 3},
    "dqkwg": {"num_warps": 4, "num_stages": 3},
    "wy": {"num_warps": 4, "num_stages": 3},
}
# V block of the two sequential kernels. 64 won at both 8 x 4k and 1 x 64k tokens on an H200 (2026-11-23): wider
# blocks beat more programs even when 30 heads x 3 blocks leave most SMs idle. 0 picks it from the program count.
SEQ_BV = 64


_STAGES_THAT_FIT: dict[tuple, int] = {}


def _launch(kernel, grid: tuple[int, ...], name: str, *args, **kwargs) -> None:
    """Launch with LAUNCH[name]; on a shared-memory overflow, retry with fewer pipeline stages (remembered).

    Triton's shared memory for pipelined loops is hard to predict (fp32 at K=128 asked 263 KB of the H100's 227 KB
    with 2 stages), and OutOfResources is raised before the kernel runs, so retrying is safe.
    """
    cfg = dict(LAUNCH[name])
    key = (name, *(v for v in kwargs.values() if isinstance(v, int)),
           *(a.dtype for a in args if isinstance(a, torch.Tensor)))
    cfg["num_stages"] = min(cfg["num_stages"], _STAGES_THAT_FIT.get(key, cfg["num_stages"]))
    while True:
        try:
            kernel[grid](*args, **kwargs, **cfg)
            return
        except OutOfResources:
            if cfg["num_stages"] == 1:
                raise
            cfg["num_stages"] -= 1
            _STAGES_THAT_FIT[key] = cfg["num_stages"]


def _pick_bk(K: int) -> int:
    """Slab width for K: the fewest padded columns with at most 4 slabs, ties to the wider slab."""
    if K > 256 or K % 16:
        raise ValueError(f"GDN kernels take head dims that are multiples of 16 up to 256, got K={K}")
    best = min((triton.cdiv(K, bk) * bk, -bk) for bk in (64, 32, 16) if triton.cdiv(K, bk) <= 4)
    return -best[1]


def _pick_bv_seq(V: int, programs_per_bv: int, device: torch.device) -> int:
    """V block for the sequential kernels: the widest that still gives about 2 programs per SM."""
    if SEQ_BV:
        return min(SEQ_BV, triton.next_power_of_2(V))
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    for bv in (64, 32):
        if programs_per_bv * triton.cdiv(V, bv) >= 2 * sms:
            return min(bv, triton.next_power_of_2(V))
    return min(16, triton.next_power_of_2(V))


# ----------------------------------------------------------------------------------------------------------------
# L2 norm of q / k rows (forward and backward), fused into the autograd function.
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _l2norm_fwd_kernel(x, y, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    i_r = tl.program_id(0)
    o_r = i_r * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m = (o_r[:, None] < R) & (o_d[None, :] < D)
    b_x = tl.load(x + o_r[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    b_y = b_x * tl.rsqrt(tl.sum(b_x * b_x, 1) + 1e-6)[:, None]
    tl.store(y + o_r[:, None] * D + o_d[None, :], b_y.to(y.dtype.element_ty), mask=m)


@triton.jit
def _l2norm_bwd_kernel(x, dy, dx, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    i_r = tl.program_id(0)
    o_r = i_r * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m = (o_r[:, None] < R) & (o_d[None, :] < D)
    b_x = tl.load(x + o_r[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    b_dy = tl.load(dy + o_r[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    b_r = tl.rsqrt(tl.sum(b_x * b_x, 1) + 1e-6)
    b_y = b_x * b_r[:, None]
    b_dx = (b_dy - b_y * tl.sum(b_y * b_dy, 1)[:, None]) * b_r[:, None]
    tl.store(dx + o_r[:, None] * D + o_d[None, :], b_dx.to(dx.dtype.element_ty), mask=m)


def _l2norm_fwd(x: torch.Tensor) -> torch.Tensor:
    D = x.shape[-1]
    y = torch.empty_like(x)
    R = x.numel() // D
    _l2norm_fwd_kernel[(triton.cdiv(R, 16),)](x, y, R, D=D, BR=16, BD=triton.next_power_of_2(D))
    return y


def _l2norm_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    D = x.shape[-1]
    dx = torch.empty_like(x)
    R = x.numel() // D
    _l2norm_bwd_kernel[(triton.cdiv(R, 16),)](x, dy, dx, R, D=D, BR=16, BD=triton.next_power_of_2(D))
    return dx


# ----------------------------------------------------------------------------------------------------------------
# Forward kernels.
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _chunk_bounds(cu_seqlens, chunk_indices, i_c):
    """(document, chunk within it, first token, document length) of global chunk i_c."""
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int32)
    i_t = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int32)
    bos = tl.load(cu_seqlens + i_n).to(tl.int32)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int32)
    return i_n, i_t, bos, eos - bos


@triton.jit
def _inv_unit_lower16(b_A):
    """(I + A)^-1 for a strictly lower [16, 16] block, by forward substitution one row at a time."""
    o_i = tl.arange(0, 16)
    b_T = -b_A
    for i in range(1, 16):
        b_a = tl.sum(tl.where(o_i[:, None] == i, b_T, 0.0), 0)
        b_a = b_a + tl.sum(b_a[:, None] * b_T, 0)
        b_T = tl.where(o_i[:, None] == i, b_a[None, :], b_T)
    return b_T + tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)


@triton.jit
def _gc_block(g, bos, T_n, i_t, i_h, b_g64, o_t, j: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    """Cumulative log decay of rows [16 j, 16 j + 16) of the chunk, offset by the rows before them."""
    o_i = i_t * BT + j * 16 + tl.arange(0, 16)
    b_g = tl.load(g + (bos + o_i) * H + i_h, mask=o_i < T_n, other=0).to(tl.float32)
    return tl.cumsum(b_g, 0) + tl.sum(tl.where(o_t < j * 16, b_g64, 0.0), 0)


@triton.jit
def _store_gc_block(gc, b_gc, bos, T_n, i_t, i_h, j: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    o_r = i_t * BT + j * 16 + tl.arange(0, 16)
    tl.store(gc + (bos + o_r) * H + i_h, b_gc, mask=o_r < T_n)


@triton.jit
def _kk_block(k, bos, T_n, i_t, i_h, i_k, j: tl.constexpr, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
              BK: tl.constexpr):
    o_r = i_t * BT + j * 16 + tl.arange(0, 16)
    o_c = i_k * BK + tl.arange(0, BK)
    p = k + ((bos + o_r).to(tl.int64) * H + i_h)[:, None] * K + o_c[None, :]
    return tl.load(p, mask=(o_r < T_n)[:, None] & (o_c < K)[None, :], other=0)


@triton.jit
def _store_ai_block(Ai, b_T, bos, T_n, i_t, i_h, i: tl.constexpr, j: tl.constexpr, H: tl.constexpr,
                    BT: tl.constexpr):
    o_r = i_t * BT + i * 16 + tl.arange(0, 16)
    o_c = j * 16 + tl.arange(0, 16)
    p = Ai + ((bos + o_r).to(tl.int64) * H + i_h)[:, None] * BT + o_c[None, :]
    tl.store(p, b_T, mask=(o_r < T_n)[:, None])


@triton.jit
def _fwd_solve_kernel(k, g, beta, gc, Ai, cu_seqlens, chunk_indices, H: tl.constexpr, K: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr):
    """Per (chunk, head): gc (in-chunk cumsum of g) and Ai = (I + A)^-1, built from 16 x 16 blocks."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = tl.arange(0, BT)
    b_g64 = tl.load(g + (bos + i_t * BT + o_t) * H + i_h, mask=i_t * BT + o_t < T_n, other=0).to(tl.float32)
    b_gc0 = _gc_block(g, bos, T_n, i_t, i_h, b_g64, o_t, 0, H, BT)
    b_gc1 = _gc_block(g, bos, T_n, i_t, i_h, b_g64, o_t, 1, H, BT)
    b_gc2 = _gc_block(g, bos, T_n, i_t, i_h, b_g64, o_t, 2, H, BT)
    b_gc3 = _gc_block(g, bos, T_n, i_t, i_h, b_g64, o_t, 3, H, BT)
    o_i = tl.arange(0, 16)
    _store_gc_block(gc, b_gc0, bos, T_n, i_t, i_h, 0, H, BT)
    _store_gc_block(gc, b_gc1, bos, T_n, i_t, i_h, 1, H, BT)
    _store_gc_block(gc, b_gc2, bos, T_n, i_t, i_h, 2, H, BT)
    _store_gc_block(gc, b_gc3, bos, T_n, i_t, i_h, 3, H, BT)
    b_b0 = tl.load(beta + (bos + i_t * BT + o_i) * H + i_h, mask=i_t * BT + o_i < T_n, other=0).to(tl.float32)
    b_b1 = tl.load(beta + (bos + i_t * BT + 16 + o_i) * H + i_h, mask=i_t * BT + 16 + o_i < T_n, other=0).to(tl.float32)
    b_b2 = tl.load(beta + (bos + i_t * BT + 32 + o_i) * H + i_h, mask=i_t * BT + 32 + o_i < T_n, other=0).to(tl.float32)
    b_b3 = tl.load(beta + (bos + i_t * BT + 48 + o_i) * H + i_h, mask=i_t * BT + 48 + o_i < T_n, other=0).to(tl.float32)

    b_A00 = tl.zeros([16, 16], dtype=tl.float32)
    b_A11 = tl.zeros([16, 16], dtype=tl.float32)
    b_A22 = tl.zeros([16, 16], dtype=tl.float32)
    b_A33 = tl.zeros([16, 16], dtype=tl.float32)
    b_A10 = tl.zeros([16, 16], dtype=tl.float32)
    b_A20 = tl.zeros([16, 16], dtype=tl.float32)
    b_A21 = tl.zeros([16, 16], dtype=tl.float32)
    b_A30 = tl.zeros([16, 16], dtype=tl.float32)
    b_A31 = tl.zeros([16, 16], dtype=tl.float32)
    b_A32 = tl.zeros([16, 16], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k0 = _kk_block(k, bos, T_n, i_t, i_h, i_k, 0, H, K, BT, BK)
        b_k1 = _kk_block(k, bos, T_n, i_t, i_h, i_k, 1, H, K, BT, BK)
        b_k2 = _kk_block(k, bos, T_n, i_t, i_h, i_k, 2, H, K, BT, BK)
        b_k3 = _kk_block(k, bos, T_n, i_t, i_h, i_k, 3, H, K, BT, BK)
        b_A00 += tl.dot(b_k0, tl.trans(b_k0))
        b_A11 += tl.dot(b_k1, tl.trans(b_k1))
        b_A22 += tl.dot(b_k2, tl.trans(b_k2))
        b_A33 += tl.dot(b_k3, tl.trans(b_k3))
        b_A10 += tl.dot(b_k1, tl.trans(b_k0))
        b_A20 += tl.dot(b_k2, tl.trans(b_k0))
        b_A21 += tl.dot(b_k2, tl.trans(b_k1))
        b_A30 += tl.dot(b_k3, tl.trans(b_k0))
        b_A31 += tl.dot(b_k3, tl.trans(b_k1))
        b_A32 += tl.dot(b_k3, tl.trans(b_k2))
    # gate and beta; the diagonal blocks keep their strictly lower part (where, not a product: exp may overflow above)
    m_low = o_i[:, None] > o_i[None, :]
    b_A00 = tl.where(m_low, b_A00 * b_b0[:, None] * tl.exp(b_gc0[:, None] - b_gc0[None, :]), 0.0)
    b_A11 = tl.where(m_low, b_A11 * b_b1[:, None] * tl.exp(b_gc1[:, None] - b_gc1[None, :]), 0.0)
    b_A22 = tl.where(m_low, b_A22 * b_b2[:, None] * tl.exp(b_gc2[:, None] - b_gc2[None, :]), 0.0)
    b_A33 = tl.where(m_low, b_A33 * b_b3[:, None] * tl.exp(b_gc3[:, None] - b_gc3[None, :]), 0.0)
    b_A10 = b_A10 * b_b1[:, None] * tl.exp(b_gc1[:, None] - b_gc0[None, :])
    b_A20 = b_A20 * b_b2[:, None] * tl.exp(b_gc2[:, None] - b_gc0[None, :])
    b_A21 = b_A21 * b_b2[:, None] * tl.exp(b_gc2[:, None] - b_gc1[None, :])
    b_A30 = b_A30 * b_b3[:, None] * tl.exp(b_gc3[:, None] - b_gc0[None, :])
    b_A31 = b_A31 * b_b3[:, None] * tl.exp(b_gc3[:, None] - b_gc1[None, :])
    b_A32 = b_A32 * b_b3[:, None] * tl.exp(b_gc3[:, None] - b_gc2[None, :])
    b_T00 = _inv_unit_lower16(b_A00)
    b_T11 = _inv_unit_lower16(b_A11)
    b_T22 = _inv_unit_lower16(b_A22)
    b_T33 = _inv_unit_lower16(b_A33)
    # block forward substitution: T_ij = -T_ii sum_{j <= m < i} A_im T_mj
    b_T10 = -tl.dot(b_T11, tl.dot(b_A10, b_T00, input_precision="ieee"), input_precision="ieee")
    b_T21 = -tl.dot(b_T22, tl.dot(b_A21, b_T11, input_precision="ieee"), input_precision="ieee")
    b_T32 = -tl.dot(b_T33, tl.dot(b_A32, b_T22, input_precision="ieee"), input_precision="ieee")
    b_T20 = -tl.dot(b_T22, tl.dot(b_A20, b_T00, input_precision="ieee") + tl.dot(b_A21, b_T10, input_precision="ieee"),
                    input_precision="ieee")
    b_T31 = -tl.dot(b_T33, tl.dot(b_A31, b_T11, input_precision="ieee") + tl.dot(b_A32, b_T21, input_precision="ieee"),
                    input_precision="ieee")
    b_T30 = -tl.dot(b_T33, tl.dot(b_A30, b_T00, input_precision="ieee") + tl.dot(b_A31, b_T10, input_precision="ieee")
                    + tl.dot(b_A32, b_T20, input_precision="ieee"), input_precision="ieee")
    b_Z = tl.zeros([16, 16], dtype=tl.float32)
    _store_ai_block(Ai, b_T00, bos, T_n, i_t, i_h, 0, 0, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 0, 1, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 0, 2, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 0, 3, H, BT)
    _store_ai_block(Ai, b_T10, bos, T_n, i_t, i_h, 1, 0, H, BT)
    _store_ai_block(Ai, b_T11, bos, T_n, i_t, i_h, 1, 1, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 1, 2, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 1, 3, H, BT)
    _store_ai_block(Ai, b_T20, bos, T_n, i_t, i_h, 2, 0, H, BT)
    _store_ai_block(Ai, b_T21, bos, T_n, i_t, i_h, 2, 1, H, BT)
    _store_ai_block(Ai, b_T22, bos, T_n, i_t, i_h, 2, 2, H, BT)
    _store_ai_block(Ai, b_Z, bos, T_n, i_t, i_h, 2, 3, H, BT)
    _store_ai_block(Ai, b_T30, bos, T_n, i_t, i_h, 3, 0, H, BT)
    _store_ai_block(Ai, b_T31, bos, T_n, i_t, i_h, 3, 1, H, BT)
    _store_ai_block(Ai, b_T32, bos, T_n, i_t, i_h, 3, 2, H, BT)
    _store_ai_block(Ai, b_T33, bos, T_n, i_t, i_h, 3, 3, H, BT)


@triton.jit
def _fwd_wu_kernel(k, v, beta, gc, Ai, w, u, cu_seqlens, chunk_indices, H: tl.constexpr, K: tl.constexpr,
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Per (chunk, head): W = Ai diag(beta exp(gc)) K and U = Ai diag(beta) V."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T_n
    b_A = _load_rows(Ai, bos, T_n, i_h, i_t, 0, H, BT, BT, BT).to(k.dtype.element_ty)
    b_b = tl.load(beta + (bos + o_t) * H + i_h, mask=m_t, other=0).to(tl.float32)
    b_gam = tl.exp(tl.load(gc + (bos + o_t) * H + i_h, mask=m_t, other=0))
    for i_k in range(tl.cdiv(K, BK)):
        b_k = _load_rows(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_kb = (b_k * (b_b * b_gam)[:, None]).to(b_k.dtype)
        _store_rows(w, bos, T_n, i_h, i_t, i_k, H, K, BT, BK, tl.dot(b_A, b_kb))
    for i_v in range(tl.cdiv(V, BV)):
        b_v = _load_rows(v, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_vb = (b_v * b_b[:, None]).to(b_v.dtype)
        _store_rows(u, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, tl.dot(b_A, b_vb))


@triton.jit
def _load_slab(base, i_s, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """[BK, BV] slab of a [K, V] state."""
    o_k = i_s * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    return tl.load(base + o_k[:, None] * V + o_v[None, :], mask=(o_k < K)[:, None] & (o_v < V)[None, :], other=0)


@triton.jit
def _load_slab_t(base, i_s, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The same slab transposed, [BV, BK]."""
    o_k = i_s * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    return tl.load(base + o_k[None, :] * V + o_v[:, None], mask=(o_k < K)[None, :] & (o_v < V)[:, None], other=0)


@triton.jit
def _store_slab(base, i_s, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, b_x):
    o_k = i_s * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    tl.store(base + o_k[:, None] * V + o_v[None, :], b_x.to(base.dtype.element_ty),
             mask=(o_k < K)[:, None] & (o_v < V)[None, :])


@triton.jit
def _load_rows(x, bos, T_n, i_h, i_t, i_s, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """[BT, BD] block of a packed [T, H, D] tensor: chunk i_t of the document at bos, column block i_s."""
    o_r = i_t * BT + tl.arange(0, BT)
    o_c = i_s * BD + tl.arange(0, BD)
    p = x + ((bos + o_r).to(tl.int64) * H + i_h)[:, None] * D + o_c[None, :]
    return tl.load(p, mask=(o_r < T_n)[:, None] & (o_c < D)[None, :], other=0)


@triton.jit
def _load_rows_t(x, bos, T_n, i_h, i_t, i_s, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """The same block transposed, [BD, BT]."""
    o_r = i_t * BT + tl.arange(0, BT)
    o_c = i_s * BD + tl.arange(0, BD)
    p = x + ((bos + o_r).to(tl.int64) * H + i_h)[None, :] * D + o_c[:, None]
    return tl.load(p, mask=(o_r < T_n)[None, :] & (o_c < D)[:, None], other=0)


@triton.jit
def _store_rows(x, bos, T_n, i_h, i_t, i_s, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                b_x):
    o_r = i_t * BT + tl.arange(0, BT)
    o_c = i_s * BD + tl.arange(0, BD)
    p = x + ((bos + o_r).to(tl.int64) * H + i_h)[:, None] * D + o_c[None, :]
    tl.store(p, b_x.to(x.dtype.element_ty), mask=(o_r < T_n)[:, None] & (o_c < D)[None, :])


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
})
@triton.jit
def _fwd_h_kernel(k, w, u, gc, h, v_new, h0, ht, cu_seqlens, chunk_offsets, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
                  USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr):
    """Sequential over one document's chunks for one (head, V block): stores S per chunk and E = U - W S.

    The state lives in up to four [BK, BV] fp32 slabs (b_h0..b_h3) so that K needs no padding to a power of two.
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int32)
    T_n = tl.load(cu_seqlens + i_n + 1).to(tl.int32) - bos
    boh = tl.load(chunk_offsets + i_n).to(tl.int32)
    b_h0 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h3 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        p0 = h0 + i_nh * K * V
        b_h0 = _load_slab(p0, 0, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 1:
            b_h1 = _load_slab(p0, 1, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 2:
            b_h2 = _load_slab(p0, 2, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 3:
            b_h3 = _load_slab(p0, 3, i_v, K, V, BK, BV).to(tl.float32)
    o_t = tl.arange(0, BT)
    for i_t in range(tl.cdiv(T_n, BT)):
        p_h = h + ((boh + i_t) * H + i_h).to(tl.int64) * K * V
        _store_slab(p_h, 0, i_v, K, V, BK, BV, b_h0.to(h.dtype.element_ty))
        b_w = _load_rows(w, bos, T_n, i_h, i_t, 0, H, K, BT, BK)
        b_v = tl.dot(b_w, b_h0.to(b_w.dtype))
        if NK > 1:
            _store_slab(p_h, 1, i_v, K, V, BK, BV, b_h1.to(h.dtype.element_ty))
            b_w = _load_rows(w, bos, T_n, i_h, i_t, 1, H, K, BT, BK)
            b_v += tl.dot(b_w, b_h1.to(b_w.dtype))
        if NK > 2:
            _store_slab(p_h, 2, i_v, K, V, BK, BV, b_h2.to(h.dtype.element_ty))
            b_w = _load_rows(w, bos, T_n, i_h, i_t, 2, H, K, BT, BK)
            b_v += tl.dot(b_w, b_h2.to(b_w.dtype))
        if NK > 3:
            _store_slab(p_h, 3, i_v, K, V, BK, BV, b_h3.to(h.dtype.element_ty))
            b_w = _load_rows(w, bos, T_n, i_h, i_t, 3, H, K, BT, BK)
            b_v += tl.dot(b_w, b_h3.to(b_w.dtype))
        b_v = _load_rows(u, bos, T_n, i_h, i_t, i_v, H, V, BT, BV).to(tl.float32) - b_v
        _store_rows(v_new, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, b_v)
        m_t = i_t * BT + o_t < T_n
        b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
        b_gl = tl.load(gc + (bos + tl.minimum((i_t + 1) * BT, T_n) - 1) * H + i_h)
        b_v = (b_v * tl.where(m_t, tl.exp(b_gl - b_gc), 0.0)[:, None]).to(k.dtype.element_ty)
        b_dec = tl.exp(b_gl)
        b_k = _load_rows_t(k, bos, T_n, i_h, i_t, 0, H, K, BT, BK)
        b_h0 = b_h0 * b_dec + tl.dot(b_k, b_v)
        if NK > 1:
            b_k = _load_rows_t(k, bos, T_n, i_h, i_t, 1, H, K, BT, BK)
            b_h1 = b_h1 * b_dec + tl.dot(b_k, b_v)
        if NK > 2:
            b_k = _load_rows_t(k, bos, T_n, i_h, i_t, 2, H, K, BT, BK)
            b_h2 = b_h2 * b_dec + tl.dot(b_k, b_v)
        if NK > 3:
            b_k = _load_rows_t(k, bos, T_n, i_h, i_t, 3, H, K, BT, BK)
            b_h3 = b_h3 * b_dec + tl.dot(b_k, b_v)
    if STORE_FINAL_STATE:
        p_ht = ht + i_nh * K * V
        _store_slab(p_ht, 0, i_v, K, V, BK, BV, b_h0)
        if NK > 1:
            _store_slab(p_ht, 1, i_v, K, V, BK, BV, b_h1)
        if NK > 2:
            _store_slab(p_ht, 2, i_v, K, V, BK, BV, b_h2)
        if NK > 3:
            _store_slab(p_ht, 3, i_v, K, V, BK, BV, b_h3)


@triton.jit
def _fwd_o_kernel(q, k, v_new, h, gc, o, cu_seqlens, chunk_indices, scale, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Per (V block, chunk, head): O = scale (diag(exp(gc)) Q S + (D o QK^T, causal) E)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = tl.arange(0, BT)
    m_t = i_t * BT + o_t < T_n
    p_h = h + (i_c * H + i_h).to(tl.int64) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = _load_rows(q, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_k = _load_rows_t(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_h = _load_slab(p_h, i_k, i_v, K, V, BK, BV)
        b_o += tl.dot(b_q, b_h.to(b_q.dtype))
        b_A += tl.dot(b_q, b_k)
    b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
    b_o = b_o * tl.exp(b_gc)[:, None]
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_A = tl.where(m_A, b_A * tl.exp(b_gc[:, None] - b_gc[None, :]), 0.0)
    b_vn = _load_rows(v_new, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
    b_o = (b_o + tl.dot(b_A.to(b_vn.dtype), b_vn)) * scale
    _store_rows(o, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, b_o)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernels.
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_dv_local_kernel(q, k, gc, do, dv, cu_seqlens, chunk_indices, scale, H: tl.constexpr, K: tl.constexpr,
                         V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Per (chunk, head): the in-chunk part of dE, scale (D o QK^T, causal)^T dO."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = tl.arange(0, BT)
    m_t = i_t * BT + o_t < T_n
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = _load_rows(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_q = _load_rows_t(q, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_A += tl.dot(b_k, b_q)
    b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
    m_A = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_A = tl.where(m_A, b_A * tl.exp(b_gc[None, :] - b_gc[:, None]) * scale, 0.0).to(do.dtype.element_ty)
    for i_v in range(tl.cdiv(V, BV)):
        b_do = _load_rows(do, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        _store_rows(dv, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, tl.dot(b_A, b_do))


@triton.heuristics({
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "STORE_INITIAL_STATE_GRADIENT": lambda args: args["dh0"] is not None,
})
@triton.jit
def _bwd_dh_kernel(q, k, w, gc, do, dv_local, dv, dh, dht, dh0, cu_seqlens, chunk_offsets, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, NK: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr,
                   STORE_INITIAL_STATE_GRADIENT: tl.constexpr):
    """Reverse-sequential over one document's chunks: dS' per chunk and the full dE.

    dE = dE_local + diag(exp(gc_last - gc)) K dS';  dS = exp(gc_last) dS' + scale (diag(exp(gc)) Q)^T dO - W^T dE.
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int32)
    T_n = tl.load(cu_seqlens + i_n + 1).to(tl.int32) - bos
    boh = tl.load(chunk_offsets + i_n).to(tl.int32)
    b_h0 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h3 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        p0 = dht + i_nh * K * V
        b_h0 = _load_slab(p0, 0, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 1:
            b_h1 = _load_slab(p0, 1, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 2:
            b_h2 = _load_slab(p0, 2, i_v, K, V, BK, BV).to(tl.float32)
        if NK > 3:
            b_h3 = _load_slab(p0, 3, i_v, K, V, BK, BV).to(tl.float32)
    o_t = tl.arange(0, BT)
    for i_t in range(tl.cdiv(T_n, BT) - 1, -1, -1):
        p_dh = dh + ((boh + i_t) * H + i_h).to(tl.int64) * K * V
        _store_slab(p_dh, 0, i_v, K, V, BK, BV, b_h0.to(dh.dtype.element_ty))
        b_k = _load_rows(k, bos, T_n, i_h, i_t, 0, H, K, BT, BK)
        b_dv = tl.dot(b_k, b_h0.to(b_k.dtype))
        if NK > 1:
            _store_slab(p_dh, 1, i_v, K, V, BK, BV, b_h1.to(dh.dtype.element_ty))
            b_k = _load_rows(k, bos, T_n, i_h, i_t, 1, H, K, BT, BK)
            b_dv += tl.dot(b_k, b_h1.to(b_k.dtype))
        if NK > 2:
            _store_slab(p_dh, 2, i_v, K, V, BK, BV, b_h2.to(dh.dtype.element_ty))
            b_k = _load_rows(k, bos, T_n, i_h, i_t, 2, H, K, BT, BK)
            b_dv += tl.dot(b_k, b_h2.to(b_k.dtype))
        if NK > 3:
            _store_slab(p_dh, 3, i_v, K, V, BK, BV, b_h3.to(dh.dtype.element_ty))
            b_k = _load_rows(k, bos, T_n, i_h, i_t, 3, H, K, BT, BK)
            b_dv += tl.dot(b_k, b_h3.to(b_k.dtype))
        m_t = i_t * BT + o_t < T_n
        b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
        b_gl = tl.load(gc + (bos + tl.minimum((i_t + 1) * BT, T_n) - 1) * H + i_h)
        b_dvl = _load_rows(dv_local, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_dv = b_dv * tl.where(m_t, tl.exp(b_gl - b_gc), 0.0)[:, None] + b_dvl.to(tl.float32)
        _store_rows(dv, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, b_dv)
        b_do = _load_rows(do, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_dv = b_dv.to(b_do.dtype)
        b_qs = tl.where(m_t, tl.exp(b_gc) * scale, 0.0)[None, :]
        b_dec = tl.exp(b_gl)
        b_q = _load_rows_t(q, bos, T_n, i_h, i_t, 0, H, K, BT, BK)
        b_w = _load_rows_t(w, bos, T_n, i_h, i_t, 0, H, K, BT, BK)
        b_h0 = b_h0 * b_dec + tl.dot((b_q * b_qs).to(b_do.dtype), b_do) - tl.dot(b_w.to(b_do.dtype), b_dv)
        if NK > 1:
            b_q = _load_rows_t(q, bos, T_n, i_h, i_t, 1, H, K, BT, BK)
            b_w = _load_rows_t(w, bos, T_n, i_h, i_t, 1, H, K, BT, BK)
            b_h1 = b_h1 * b_dec + tl.dot((b_q * b_qs).to(b_do.dtype), b_do) - tl.dot(b_w.to(b_do.dtype), b_dv)
        if NK > 2:
            b_q = _load_rows_t(q, bos, T_n, i_h, i_t, 2, H, K, BT, BK)
            b_w = _load_rows_t(w, bos, T_n, i_h, i_t, 2, H, K, BT, BK)
            b_h2 = b_h2 * b_dec + tl.dot((b_q * b_qs).to(b_do.dtype), b_do) - tl.dot(b_w.to(b_do.dtype), b_dv)
        if NK > 3:
            b_q = _load_rows_t(q, bos, T_n, i_h, i_t, 3, H, K, BT, BK)
            b_w = _load_rows_t(w, bos, T_n, i_h, i_t, 3, H, K, BT, BK)
            b_h3 = b_h3 * b_dec + tl.dot((b_q * b_qs).to(b_do.dtype), b_do) - tl.dot(b_w.to(b_do.dtype), b_dv)
    if STORE_INITIAL_STATE_GRADIENT:
        p0 = dh0 + i_nh * K * V
        _store_slab(p0, 0, i_v, K, V, BK, BV, b_h0)
        if NK > 1:
            _store_slab(p0, 1, i_v, K, V, BK, BV, b_h1)
        if NK > 2:
            _store_slab(p0, 2, i_v, K, V, BK, BV, b_h2)
        if NK > 3:
            _store_slab(p0, 3, i_v, K, V, BK, BV, b_h3)


@triton.jit
def _bwd_dqkwg_kernel(q, k, v_new, h, dh, gc, do, dv, dq, dk, dw, dg, cu_seqlens, chunk_indices, scale, T_all,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr):
    """Per (K slab, chunk, head): dQ, dK (output and state paths), dW = -dE S^T, and this slab's part of d gc."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = tl.arange(0, BT)
    m_t = i_t * BT + o_t < T_n
    p_h = h + (i_c * H + i_h).to(tl.int64) * K * V
    p_dh = dh + (i_c * H + i_h).to(tl.int64) * K * V
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    b_dsT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        b_vn = _load_rows(v_new, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_do = _load_rows(do, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_dv = _load_rows(dv, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_hT = _load_slab_t(p_h, i_k, i_v, K, V, BK, BV).to(b_do.dtype)
        b_dhT = _load_slab_t(p_dh, i_k, i_v, K, V, BK, BV).to(b_do.dtype)
        b_dgl += tl.sum(b_hT.to(tl.float32) * b_dhT.to(tl.float32), 0)
        b_ds += tl.dot(b_do, tl.trans(b_vn.to(b_do.dtype)))
        b_dsT += tl.dot(b_vn.to(b_do.dtype), tl.trans(b_do))
        b_dq += tl.dot(b_do, b_hT)
        b_dk += tl.dot(b_vn.to(b_do.dtype), b_dhT)
        b_dw += tl.dot(b_dv.to(b_do.dtype), b_hT)
    b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
    b_gl = tl.load(gc + (bos + tl.minimum((i_t + 1) * BT, T_n) - 1) * H + i_h)
    b_q = _load_rows(q, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
    b_k = _load_rows(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
    b_dq = b_dq * tl.where(m_t, tl.exp(b_gc) * scale, 0.0)[:, None]
    b_dk = b_dk * tl.where(m_t, tl.exp(b_gl - b_gc), 0.0)[:, None]
    b_dgl_all = tl.sum(b_dgl, 0) * tl.exp(b_gl) + tl.sum(b_dk * b_k.to(tl.float32))
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_ds = tl.where(m_A, b_ds * tl.exp(b_gc[:, None] - b_gc[None, :]) * scale, 0.0).to(b_k.dtype)
    # ds^T comes from its own product: tl.trans of a dot result is miscompiled on Hopper by Triton 3.4 - 3.7.0
    # (FLA issue #640); the extra [BT, BV] x [BV, BT] product per V block is cheap
    m_AT = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_dsT = tl.where(m_AT, b_dsT * tl.exp(b_gc[None, :] - b_gc[:, None]) * scale, 0.0).to(b_k.dtype)
    b_dq += tl.dot(b_ds, b_k)
    b_dk += tl.dot(b_dsT, b_q)
    b_dgc = tl.sum(b_dq * b_q.to(tl.float32), 1) - tl.sum(b_dk * b_k.to(tl.float32), 1)
    b_dgc = tl.where(o_t == tl.minimum(BT, T_n - i_t * BT) - 1, b_dgc + b_dgl_all, b_dgc)
    _store_rows(dq, bos, T_n, i_h, i_t, i_k, H, K, BT, BK, b_dq)
    _store_rows(dk, bos, T_n, i_h, i_t, i_k, H, K, BT, BK, b_dk)
    _store_rows(dw, bos, T_n, i_h, i_t, i_k, H, K, BT, BK, -b_dw)
    tl.store(dg + i_k * T_all * H + (bos + i_t * BT + o_t) * H + i_h, b_dgc, mask=m_t)


@triton.jit
def _bwd_wy_kernel(k, v, beta, gc, Ai, dw, du, dk, dv, db, dg_part, dg, scratch, cu_seqlens, chunk_indices, T_all,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, NKP: tl.constexpr):
    """Per (chunk, head): back through W, U and Ai = (I + A)^-1 to dk (added in place), dv, dbeta and dg.

    dA = -Ai^T (dU (beta V)^T + dW (beta exp(gc) K)^T) Ai^T on the strictly lower part; dg is the reverse
    in-chunk cumsum of d gc.
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, i_t, bos, T_n = _chunk_bounds(cu_seqlens, chunk_indices, i_c)
    o_t = tl.arange(0, BT)
    m_t = i_t * BT + o_t < T_n
    b_A = _load_rows(Ai, bos, T_n, i_h, i_t, 0, H, BT, BT, BT)
    b_AT = tl.trans(b_A).to(k.dtype.element_ty)
    b_b = tl.load(beta + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0).to(tl.float32)
    b_gc = tl.load(gc + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
    b_gam = tl.where(m_t, tl.exp(b_gc), 0.0)
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dgc = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = _load_rows(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_dw = _load_rows(dw, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_kb = (b_k * (b_b * b_gam)[:, None]).to(b_k.dtype)
        b_dT += tl.dot(b_dw.to(b_k.dtype), tl.trans(b_kb))
        # K K^T from a register copy of the slab, not from the slab's pipelined shared-memory buffer: Triton 3.6 on
        # Hopper gives that buffer 2 stages and leaves this loop-carried wgmma in flight while the prefetch of slab
        # i + 2 overwrites the buffer it reads, a race that made dbeta and dg change between identical runs
        # (docs/perf.md). The where is an identity (rows past T_n are loaded as 0) that keeps b_k off that buffer.
        b_kr = tl.where(m_t[:, None], b_k, 0.0).to(b_k.dtype)
        b_kk += tl.dot(b_kr, tl.trans(b_kr))
    for i_v in range(tl.cdiv(V, BV)):
        b_v = _load_rows(v, bos, T_n, i_h, i_t, i_v, H, V, BT, BV)
        b_du = _load_rows(du, bos, T_n, i_h, i_t, i_v, H, V, BT, BV).to(b_v.dtype)
        b_dT += tl.dot(b_du, tl.trans((b_v * b_b[:, None]).to(b_v.dtype)))
        b_dvb = tl.dot(b_AT.to(b_v.dtype), b_du)
        b_db += tl.sum(b_dvb * b_v.to(tl.float32), 1)
        _store_rows(dv, bos, T_n, i_h, i_t, i_v, H, V, BT, BV, b_dvb * b_b[:, None])
    m_A = (o_t[:, None] > o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_dA = -tl.dot(tl.dot(tl.trans(b_A), b_dT), tl.trans(b_A))
    b_G = tl.where(m_A, b_dA * tl.exp(b_gc[:, None] - b_gc[None, :]), 0.0)
    b_db += tl.sum(b_G * b_kk, 1)
    b_R = b_G * b_kk * b_b[:, None]
    b_dgc += tl.sum(b_R, 1) - tl.sum(b_R, 0)
    b_Gk = b_G.to(k.dtype.element_ty)
    # G^T through a per-program scratch tile: tl.trans of a dot result is miscompiled on Hopper by Triton 3.4 - 3.7.0
    # (FLA issue #640). The barrier makes the tile's stores visible to the whole program before the reload.
    p_G = scratch + (i_c * H + i_h).to(tl.int64) * BT * BT
    tl.store(p_G + o_t[:, None] * BT + o_t[None, :], b_Gk)
    tl.debug_barrier()
    b_GkT = tl.load(p_G + o_t[None, :] * BT + o_t[:, None])
    for i_k in range(tl.cdiv(K, BK)):
        b_k = _load_rows(k, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_dw = _load_rows(dw, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_dk = _load_rows(dk, bos, T_n, i_h, i_t, i_k, H, K, BT, BK)
        b_dkb = tl.dot(b_AT, b_dw.to(b_k.dtype))
        b_t = tl.sum(b_dkb * b_k.to(tl.float32), 1) * b_gam
        b_db += b_t
        b_dgc += b_t * b_b
        b_dk += b_dkb * (b_b * b_gam)[:, None]
        b_dk += tl.dot(b_Gk, b_k) * b_b[:, None]
        b_dk += tl.dot(b_GkT, (b_k * b_b[:, None]).to(b_k.dtype))
        _store_rows(dk, bos, T_n, i_h, i_t, i_k, H, K, BT, BK, b_dk)
    for i_p in tl.static_range(NKP):
        b_dgc += tl.load(dg_part + i_p * T_all * H + (bos + i_t * BT + o_t) * H + i_h, mask=m_t, other=0)
    b_dg = tl.sum(b_dgc, 0) - tl.cumsum(b_dgc, 0) + b_dgc
    tl.store(dg + (bos + i_t * BT + o_t) * H + i_h, b_dg, mask=m_t)
    tl.store(db + (bos + i_t * BT + o_t) * H + i_h, b_db, mask=m_t)


# ----------------------------------------------------------------------------------------------------------------
# Host side.
# ----------------------------------------------------------------------------------------------------------------
def _chunk_layout(cu_seqlens: torch.Tensor, seq_len: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """chunk_indices [NT, 2] = (document, chunk within it) in document order, chunk_offsets [N + 1], NT.

    With equal lengths (``seq_len``) everything is known on the host; varlen needs one device-to-host read of NT.
    """
    if seq_len is not None:
        N, nt = cu_seqlens.numel() - 1, triton.cdiv(seq_len, CHUNK)
        idx = torch.arange(N * nt, device=cu_seqlens.device, dtype=torch.int32)
        offsets = torch.arange(N + 1, device=cu_seqlens.device, dtype=torch.int32) * nt
        return torch.stack([idx // max(nt, 1), idx % max(nt, 1)], 1).contiguous(), offsets, N * nt
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nts = (lens + CHUNK - 1) // CHUNK
    offsets = torch.cat([nts.new_zeros(1), nts.cumsum(0)])
    total = int(offsets[-1].item())
    doc = torch.repeat_interleave(torch.arange(len(nts), device=cu_seqlens.device), nts, output_size=total)
    within = torch.arange(total, device=cu_seqlens.device) - offsets[doc]
    indices = torch.stack([doc, within], 1).to(torch.int32).contiguous()
    return indices, offsets.to(torch.int32), total


def _forward(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, seq_len):
    """Packed forward: q/k [1, T, H, K] (already normalised), v [1, T, H, V]. Returns o, final, and the saved tensors."""
    _, T_all, H, K = k.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    BK = _pick_bk(K)
    NK = triton.cdiv(K, BK)
    BVP = min(64, triton.next_power_of_2(V))
    chunk_indices, chunk_offsets, NT = _chunk_layout(cu_seqlens, seq_len)
    gc = torch.empty(1, T_all, H, dtype=torch.float32, device=k.device)
    Ai = torch.empty(1, T_all, H, CHUNK, dtype=torch.float32, device=k.device)
    _launch(_fwd_solve_kernel, (NT, H), "solve", k, g, beta, gc, Ai, cu_seqlens, chunk_indices, H=H, K=K, BT=CHUNK,
            BK=BK)
    w, u = torch.empty_like(k), torch.empty_like(v)
    _launch(_fwd_wu_kernel, (NT, H), "wu", k, v, beta, gc, Ai, w, u, cu_seqlens, chunk_indices, H=H, K=K, V=V,
            BT=CHUNK, BK=BK, BV=BVP)
    h = torch.empty(NT, H, K, V, dtype=k.dtype, device=k.device)
    v_new = torch.empty_like(v)
    final = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    BV = _pick_bv_seq(V, N * H, k.device)
    _launch(_fwd_h_kernel, (triton.cdiv(V, BV), N * H), "h", k, w, u, gc, h, v_new, initial_state, final, cu_seqlens,
            chunk_offsets, H=H, K=K, V=V, BT=CHUNK, BK=BK, BV=BV, NK=NK)
    o = torch.empty_like(v)
    _launch(_fwd_o_kernel, (triton.cdiv(V, BVP), NT, H), "o", q, k, v_new, h, gc, o, cu_seqlens, chunk_indices, scale,
            H=H, K=K, V=V, BT=CHUNK, BK=BK, BV=BVP)
    return o, final, (gc, Ai, w, u, h, v_new, chunk_indices, chunk_offsets)


def _backward(q, k, v, beta, scale, initial_state, cu_seqlens, saved, do, dht):
    """Packed backward; returns fp32 dq, dk (of the normalised q/k), dv, dg, dbeta, dh0."""
    gc, Ai, w, _, h, v_new, chunk_indices, chunk_offsets = saved
    _, T_all, H, K = k.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    NT = chunk_indices.shape[0]
    BK = _pick_bk(K)
    NK = triton.cdiv(K, BK)
    BVP = min(64, triton.next_power_of_2(V))
    dv_local = torch.empty_like(do)
    _launch(_bwd_dv_local_kernel, (NT, H), "dv_local", q, k, gc, do, dv_local, cu_seqlens, chunk_indices, scale, H=H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BVP)
    du = torch.empty_like(do)
    dh = torch.empty(NT, H, K, V, dtype=k.dtype, device=k.device)
    dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if initial_state is not None else None
    BV = _pick_bv_seq(V, N * H, k.device)
    _launch(_bwd_dh_kernel, (triton.cdiv(V, BV), N * H), "dh", q, k, w, gc, do, dv_local, du, dh, dht, dh0,
            cu_seqlens, chunk_offsets, scale, H=H, K=K, V=V, BT=CHUNK, BK=BK, BV=BV, NK=NK)
    dq = torch.empty(1, T_all, H, K, dtype=torch.float32, device=k.device)
    dk = torch.empty_like(dq)
    dw = torch.empty_like(dq)
    dg_part = torch.empty(NK, T_all, H, dtype=torch.float32, device=k.device)
    _launch(_bwd_dqkwg_kernel, (NK, NT, H), "dqkwg", q, k, v_new, h, dh, gc, do, du, dq, dk, dw, dg_part, cu_seqlens,
            chunk_indices, scale, T_all, H=H, K=K, V=V, BT=CHUNK, BK=BK, BV=BVP)
    dv = torch.empty_like(v)
    db = torch.empty(1, T_all, H, dtype=torch.float32, device=k.device)
    dg = torch.empty_like(db)
    scratch = torch.empty(NT, H, CHUNK, CHUNK, dtype=k.dtype, device=k.device)
    _launch(_bwd_wy_kernel, (NT, H), "wy", k, v, beta, gc, Ai, dw, du, dk, dv, db, dg_part, dg, scratch, cu_seqlens,
            chunk_indices, T_all, H=H, K=K, V=V, BT=CHUNK, BK=BK, BV=BVP, NKP=NK)
    return dq, dk, dv, dg, db, dh0


class _ChunkGDN(torch.autograd.Function):
    """Packed chunked GDN. Inputs are [1, T, H, *] contiguous; l2norm of q/k runs inside when asked for."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, seq_len, use_qk_l2norm):
        q_in, k_in = q, k
        if use_qk_l2norm:
            q, k = _l2norm_fwd(q), _l2norm_fwd(k)
        o, final, saved = _forward(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, seq_len)
        ctx.save_for_backward(q_in, k_in, q, k, v, g, beta, initial_state, cu_seqlens, *saved)
        ctx.scale, ctx.use_qk_l2norm = scale, use_qk_l2norm
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q_in, k_in, q, k, v, g, beta, initial_state, cu_seqlens, *saved = ctx.saved_tensors
        do = do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dg, db, dh0 = _backward(q, k, v, beta, ctx.scale, initial_state, cu_seqlens, saved, do, dht)
        if ctx.use_qk_l2norm:
            dq, dk = _l2norm_bwd(q_in, dq), _l2norm_bwd(k_in, dk)
        else:
            dq, dk = dq.to(q_in.dtype), dk.to(k_in.dtype)
        dh0 = None if dh0 is None else dh0.to(initial_state.dtype)
        return dq, dk, dv, dg.to(g.dtype), db.to(beta.dtype), None, dh0, None, None, None, None


def chunk_gdn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked GDN forward with a Triton backward; same contract as ``gdn_reference``.

    Args: q_BTHK, k_BTHK, v_BTHV (same float dtype), g_BTH log decay (<= 0), beta_BTH in [0, 2]; initial_state
    [N, H, K, V] (fp32 recommended); cu_seqlens [N + 1] int with B == 1 for packed documents.
    Returns o_BTHV (dtype of v) and the final state [N, H, K, V] fp32 (None unless ``output_final_state``).
    K and V must be multiples of 16 up to 256. Gradients flow to q, k, v, g, beta and initial_state.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {B}")
    _pick_bk(K)
    if V > 256 or V % 16:
        raise ValueError(f"GDN kernels take head dims that are multiples of 16 up to 256, got V={V}")
    scale = K**-0.5 if scale is None else scale
    seq_len = T if cu_seqlens is None else None
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, B + 1, device=q.device, dtype=torch.int32) * T
    cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    N = cu_seqlens.numel() - 1
    if initial_state is not None and tuple(initial_state.shape) != (N, H, K, V):
        raise ValueError(f"initial_state must be {(N, H, K, V)}, got {tuple(initial_state.shape)}")

    def pack(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, B * T, *x.shape[2:]).contiguous()

    o, final = _ChunkGDN.apply(pack(q), pack(k), pack(v), pack(g), pack(beta), scale,
                               None if initial_state is None else initial_state.contiguous(), output_final_state,
                               cu_seqlens, seq_len, use_qk_l2norm)
    return o.reshape(B, T, H, V), final
