"""Chunked Gated DeltaNet in plain PyTorch: the CPU path for training and prefill (differentiable by autograd).

Shapes: B batch, T tokens, H heads, K key/query head dim, V value head dim, N documents (varlen),
C chunks per sequence, L tokens per chunk (64, or the next power of two >= T for shorter sequences).

Same contract as ``hyrl.kernels.gdn.reference.gdn_reference`` (argument order q, k, v, g, beta; fp32 math and state):
    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T,      o_t = scale * S_t^T q_t

Why chunks: the token loop of the reference costs T small steps; here a chunk of L tokens costs a few matmuls.
Inside a chunk, with gc the within-chunk cumulative log decay and S0 the state entering the chunk, the L delta-rule
corrections u'_j solve a unit lower-triangular system (the UT transform / WY representation):
    (I + A) U' = beta V - (beta K * exp(gc)) S0,      A_jm = beta_j (k_j . k_m) exp(gc_j - gc_m) for m < j
so U' = u - w S0 with u, w from one triangular solve per chunk, computed for all chunks at once. Only the
inter-chunk state hand-off is a Python loop:
    o_i = exp(gc_i) S0^T q_i + sum_{j <= i} exp(gc_i - gc_j) (q_i . k_j) u'_j
    S_L = exp(gc_L) S0 + sum_j exp(gc_L - gc_j) k_j u'_j^T
Every exp here is of a non-positive number (g <= 0), so nothing overflows; masked entries are set to -inf before the
exp so their gradients stay finite.

Packed batches (``cu_seqlens``): the documents are gathered into a zero-padded [N, T_max] batch, run as independent
sequences and scattered back, so no state crosses a document boundary. Zero padding is inert: g = 0 and beta = 0
leave the state unchanged, so the state after the padding is the state at the document's end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hyrl.kernels.gdn.reference import l2norm, upcast

CHUNK = 64


def chunk_len(T: int) -> int:
    """Tokens per chunk: 64, or the next power of two >= T when a whole sequence is shorter. Chunking is exact math,
    so a shorter chunk changes only rounding; padding a 16-token RL completion batch to 64 made the triangular solve
    and the chunk matmuls do 4x (solve: 16x) the work."""
    return min(CHUNK, 1 << max(T - 1, 0).bit_length())


def chunk_gdn_torch(
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
    """Chunked GDN, differentiable in q, k, v, g, beta and initial_state.

    Args: q_BTHK, k_BTHK, v_BTHV, g_BTH (log decay, <= 0), beta_BTH; initial_state [N or B, H, K, V];
    cu_seqlens [N + 1] int (packed batch, B == 1).
    Returns o_BTHV (dtype of v) and the final state [N or B, H, K, V] in fp32 (None unless asked for).
    """
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {q.shape[0]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, g, beta = (upcast(x) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    if initial_state is not None:
        initial_state = upcast(initial_state)
    if cu_seqlens is None:
        o_BTHV, final_BHKV = _chunk_batched(q, k, v, g, beta, scale, initial_state)
        return o_BTHV.to(out_dtype), final_BHKV if output_final_state else None
    index_NT, valid_NT = _document_index(cu_seqlens, q.device)
    docs = [_gather_documents(x, index_NT, valid_NT) for x in (q, k, v, g, beta)]
    o_NTHV, final_NHKV = _chunk_batched(*docs, scale, initial_state)
    o_BTHV = o_NTHV[valid_NT].unsqueeze(0)
    return o_BTHV.to(out_dtype), final_NHKV if output_final_state else None


def _document_index(cu_seqlens: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index [N, T_max] of every document's positions, and which of them are real (not padding)."""
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    starts_N, lengths_N = bounds[:-1], bounds[1:] - bounds[:-1]
    t_max = max(int(lengths_N.max()), 1) if lengths_N.numel() else 1
    offsets_T = torch.arange(t_max, device=device)
    valid_NT = offsets_T[None, :] < lengths_N[:, None]
    index_NT = torch.where(
        valid_NT, starts_N[:, None] + offsets_T[None, :], torch.zeros_like(valid_NT, dtype=torch.long)
    )
    return index_NT, valid_NT


def _gather_documents(x_1T: torch.Tensor, index_NT: torch.Tensor, valid_NT: torch.Tensor) -> torch.Tensor:
    """[1, T, ...] packed -> [N, T_max, ...] with zeros after each document's end."""
    x_NT = x_1T[0][index_NT]
    mask = valid_NT.reshape(*valid_NT.shape, *([1] * (x_NT.dim() - 2)))
    return x_NT * mask


def _chunk_batched(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    g_BTH: torch.Tensor,
    beta_BTH: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GDN over independent fp32 sequences; returns o_BTHV and the final state_BHKV."""
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    L = chunk_len(T)
    pad = (-T) % L
    C = (T + pad) // L

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, *] -> [B, H, C, L, *]
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad))
        return x.reshape(B, C, L, H, *x.shape[3:]).transpose(1, 3).transpose(2, 3)

    q_BHCLK = chunks(q_BTHK) * scale
    k_BHCLK, v_BHCLV = chunks(k_BTHK), chunks(v_BTHV)
    gc_BHCL = chunks(g_BTH).cumsum(-1)
    beta_BHCL = chunks(beta_BTH)

    causal_LL = torch.ones(L, L, dtype=torch.bool, device=q_BTHK.device).tril()
    decay_BHCLL = (gc_BHCL[..., :, None] - gc_BHCL[..., None, :]).masked_fill(~causal_LL, float("-inf")).exp()
    k_beta_BHCLK = k_BHCLK * beta_BHCL[..., None]
    A_BHCLL = (k_beta_BHCLK @ k_BHCLK.transpose(-1, -2) * decay_BHCLL).tril(-1)
    eye_LL = torch.eye(L, dtype=q_BTHK.dtype, device=q_BTHK.device)
    rhs = torch.cat([v_BHCLV * beta_BHCL[..., None], k_beta_BHCLK * gc_BHCL.exp()[..., None]], dim=-1)
    u_BHCLV, w_BHCLK = torch.linalg.solve_triangular(A_BHCLL + eye_LL, rhs, upper=False, unitriangular=True).split(
        [V, K], dim=-1
    )
    attn_BHCLL = q_BHCLK @ k_BHCLK.transpose(-1, -2) * decay_BHCLL
    q_decayed_BHCLK = q_BHCLK * gc_BHCL.exp()[..., None]
    k_to_end_BHCLK = k_BHCLK * (gc_BHCL[..., -1:] - gc_BHCL).exp()[..., None]
    chunk_decay_BHC = gc_BHCL[..., -1].exp()

    state_BHKV = q_BTHK.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outs = []
    for c in range(C):
        v_new_BHLV = u_BHCLV[:, :, c] - w_BHCLK[:, :, c] @ state_BHKV
        outs.append(q_decayed_BHCLK[:, :, c] @ state_BHKV + attn_BHCLL[:, :, c] @ v_new_BHLV)
        state_BHKV = (
            state_BHKV * chunk_decay_BHC[:, :, c, None, None] + k_to_end_BHCLK[:, :, c].transpose(-1, -2) @ v_new_BHLV
        )
    o_BHTV = torch.stack(outs, dim=2).reshape(B, H, C * L, V)[:, :, :T]
    return o_BHTV.transpose(1, 2), state_BHKV
