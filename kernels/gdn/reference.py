"""Gated DeltaNet: the sequential fp32 recurrence every other GDN path is checked against.

Shapes (legend used across ``hyrl.kernels.gdn`` and ``hyrl.model``):
    B batch, T tokens, H heads, K key/query head dim, V value head dim, N documents (varlen).

Per head, with state ``S`` of shape [K, V] (fp32 always: a bf16 state drifts over long sequences):
    S_t = exp(g_t) * S_{t-1}
    S_t = S_t + beta_t * k_t (v_t - S_t^T k_t)^T          (the delta rule; beta in [0, 2])
    o_t = scale * S_t^T q_t                                 (scale defaults to K ** -0.5)

``g`` is the per-token log decay (<= 0). With ``cu_seqlens`` the batch is packed (B == 1) and the state is reset at
every document boundary, so no information crosses from one document into the next.
"""

from __future__ import annotations

import itertools

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: low-precision inputs are computed in fp32, while float64 stays float64 so that a float64
    model is a true oracle for the fp32 paths (the tests derive their tolerances from it)."""
    return x if x.dtype == torch.float64 else x.float()

def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise the last dim; same eps and formula as transformers' and FLA's GDN."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def gdn_reference(
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
    """Token-by-token GDN in fp32.

    Args: q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH; initial_state [N or B, H, K, V]; cu_seqlens [N + 1] int.
    Returns o_BTHV (dtype of v) and the final state [N or B, H, K, V] in fp32 (None unless asked for).
    """
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {q.shape[0]}")
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, g, beta = (upcast(x) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    o = torch.zeros_like(v)
    segments = [(b, 0, q.shape[1]) for b in range(q.shape[0])] if bounds is None else [
        (0, s, e) for s, e in itertools.pairwise(bounds)
    ]
    finals = []
    for n, (b, start, end) in enumerate(segments):
        S_HKV = q.new_zeros(q.shape[2], q.shape[3], v.shape[3])
        if initial_state is not None:
            S_HKV = S_HKV + upcast(initial_state[n])
        for t in range(start, end):
            S_HKV = S_HKV * g[b, t].exp()[:, None, None]
            v_err_HV = v[b, t] - torch.einsum("hkv,hk->hv", S_HKV, k[b, t])
            S_HKV = S_HKV + torch.einsum("hk,hv->hkv", k[b, t], beta[b, t, :, None] * v_err_HV)
            o[b, t] = torch.einsum("hkv,hk->hv", S_HKV, q[b, t] * scale)
        finals.append(S_HKV)
    final = torch.stack(finals) if output_final_state else None
    return o.to(out_dtype), final
