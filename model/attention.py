"""Olmo Hybrid full attention: QK-norm over all heads, optional RoPE (released checkpoints use none), GQA.

Shapes: B batch, T new tokens, S key positions (cached + new), D model dim, H query heads, Hkv key/value heads,
Dh head dim, N documents of a packed batch.

Masks are boolean [B, 1, T, S] (True = may attend) and are built once per forward by ``attention_mask_BTS``: causal,
within one document of a packed batch, never onto padding. A query may always see itself, so a padded query row
is never empty: its output is junk but finite (an all-masked softmax row would be NaN and spread through 0 * NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import OlmoHybridConfig

from hyrl.kernels.gdn.reference import upcast
from hyrl.model.cache import HybridCache


class RMSNorm(nn.Module):
    """RMSNorm with fp32 statistics, weight applied in fp32 then cast back (transformers' OlmoHybridRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = upcast(x)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)


def uses_rope(config: OlmoHybridConfig) -> bool:
    """RoPE is on when ``rope_parameters`` names a theta (transformers' rule); the released 7B has it off."""
    rope = getattr(config, "rope_parameters", None)
    return rope is not None and rope.get("rope_theta") is not None


def rope_cos_sin(config: OlmoHybridConfig, position_ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin [B, T, Dh] for the default RoPE (other rope types are not supported)."""
    rope = config.rope_parameters
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rope_type {rope['rope_type']!r}: only 'default' RoPE is implemented")
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    exponents = torch.arange(0, dim, 2, dtype=torch.float, device=position_ids_BT.device) / dim
    inv_freq = 1.0 / (rope["rope_theta"] ** exponents)
    freqs_BTF = position_ids_BT[..., None].float() * inv_freq
    emb_BTD = torch.cat([freqs_BTF, freqs_BTF], dim=-1)
    return emb_BTD.cos(), emb_BTD.sin()


def _apply_rope(x_BHTD: torch.Tensor, cos_BTD: torch.Tensor, sin_BTD: torch.Tensor) -> torch.Tensor:
    half = x_BHTD.shape[-1] // 2
    rotated = torch.cat([-x_BHTD[..., half:], x_BHTD[..., :half]], dim=-1)
    return (x_BHTD * cos_BTD[:, None] + rotated * sin_BTD[:, None]).to(x_BHTD.dtype)


def attention_mask_BTS(
    T: int,
    past: int,
    padding_BS: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean [B or 1, 1, T, S] mask for T new queries after ``past`` cached tokens (S = past + T).

    ``padding_BS`` (1 = real) covers all S positions; ``cu_seqlens`` (packed, no cache) keeps queries in their document.
    """
    S = past + T
    q_pos_T = torch.arange(past, S, device=device)
    k_pos_S = torch.arange(S, device=device)
    mask_TS = k_pos_S[None, :] <= q_pos_T[:, None]
    if cu_seqlens is not None:
        doc_S = torch.bucketize(k_pos_S, cu_seqlens.to(device)[1:], right=True)
        mask_TS = mask_TS & (doc_S[None, :] == doc_S[past:, None])
    mask_BTS = mask_TS[None]
    if padding_BS is not None:
        mask_BTS = mask_BTS & padding_BS[:, None, -S:].bool()
    mask_BTS = mask_BTS | (k_pos_S[None, :] == q_pos_T[:, None])[None]
    return mask_BTS[:, None]


class Attention(nn.Module):
    """Full attention with transformers' parameter names (q/k/v/o_proj, q_norm, k_norm)."""

    def __init__(self, config: OlmoHybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        D, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(D, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, D, bias=bias)
        self.q_norm = RMSNorm(self.num_heads * self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.num_kv_heads * self.head_dim, config.rms_norm_eps)
        self.dropout = config.attention_dropout or 0.0

    def forward(
        self,
        x_BTD: torch.Tensor,
        *,
        mask_B1TS: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: HybridCache | None = None,
    ) -> torch.Tensor:
        """Attend from the T new tokens to cached + new keys; QK-norm runs over all heads jointly, before RoPE."""
        B, T, _ = x_BTD.shape
        q_BHTD = self.q_norm(self.q_proj(x_BTD)).view(B, T, -1, self.head_dim).transpose(1, 2)
        k_BHTD = self.k_norm(self.k_proj(x_BTD)).view(B, T, -1, self.head_dim).transpose(1, 2)
        v_BHTD = self.v_proj(x_BTD).view(B, T, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            q_BHTD, k_BHTD = _apply_rope(q_BHTD, *rope), _apply_rope(k_BHTD, *rope)
        if cache is not None:
            k_BHTD, v_BHTD = cache.append_kv(self.layer_idx, k_BHTD, v_BHTD)
        groups = self.num_heads // self.num_kv_heads
        k_BHSD = k_BHTD.repeat_interleave(groups, dim=1)
        v_BHSD = v_BHTD.repeat_interleave(groups, dim=1)
        o_BHTD = F.scaled_dot_product_attention(
            q_BHTD,
            k_BHSD,
            v_BHSD,
            attn_mask=mask_B1TS,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.head_dim**-0.5,
        )
        return self.o_proj(o_BHTD.transpose(1, 2).reshape(B, T, -1))
