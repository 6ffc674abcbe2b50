"""Explicit inference cache for the hybrid model: conv + recurrent state per GDN layer, keys/values per attention layer.

Shapes: B batch, C conv channels (2 * key_dim + value_dim), W conv kernel - 1, H heads, K/V GDN head dims,
Hkv attention key/value heads, S cached tokens, Dh attention head dim.

Why the recurrent state is fp32 by default: it is a running sum over every token seen so far, so a rounding error made
at one step is carried (decayed, but not erased) into every later step. With a bf16 state the per-step rounding adds
up over a long decode and the decode log-probs drift away from the training forward, which the RL importance ratio
then reads as policy change (``test_bf16_state_drift_bounded`` measures it). The dtype is still a config field
(``config.gdn_state_dtype``, default "float32") so the trade can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import OlmoHybridConfig


def state_dtype_of(config: OlmoHybridConfig) -> torch.dtype:
    """The GDN recurrent-state dtype named by ``config.gdn_state_dtype`` (a hyrl field; default fp32)."""
    name = getattr(config, "gdn_state_dtype", None) or "float32"
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"config.gdn_state_dtype={name!r} is not a torch float dtype; use 'float32' or 'bfloat16'")
    return dtype


@dataclass
class GDNLayerState:
    """One GDN layer's carried state: the last W conv inputs and the delta-rule state."""

    conv_BCW: torch.Tensor
    recurrent_BHKV: torch.Tensor


@dataclass
class KVLayerState:
    """One attention layer's keys and values for every token seen so far."""

    k_BHSD: torch.Tensor
    v_BHSD: torch.Tensor

    def append(self, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys/values; return all of them (past + new)."""
        self.k_BHSD = torch.cat([self.k_BHSD, k_BHTD], dim=2)
        self.v_BHSD = torch.cat([self.v_BHSD, v_BHTD], dim=2)
        return self.k_BHSD, self.v_BHSD


@dataclass
class HybridCache:
    """Per-layer state for prefill-then-decode; layers fill their entry on first use.

    ``seen_tokens`` counts the positions already processed (padding included), so the next call's positions start
    there. Use one cache per batch of sequences; it is not meant to be shared with training forwards.
    """

    state_dtype: torch.dtype = torch.float32
    gdn: dict[int, GDNLayerState] = field(default_factory=dict)
    kv: dict[int, KVLayerState] = field(default_factory=dict)
    seen_tokens: int = 0

    @classmethod
    def from_config(cls, config: OlmoHybridConfig, state_dtype: torch.dtype | None = None) -> HybridCache:
        """An empty cache whose recurrent state dtype comes from ``config.gdn_state_dtype`` unless given."""
        return cls(state_dtype=state_dtype if state_dtype is not None else state_dtype_of(config))

    def get_seq_length(self) -> int:
        """Tokens already processed (the HF ``Cache`` name for it)."""
        return self.seen_tokens

    def append_kv(
        self, layer_idx: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store an attention layer's new keys/values and return past + new."""
        if layer_idx not in self.kv:
            self.kv[layer_idx] = KVLayerState(k_BHTD, v_BHTD)
            return k_BHTD, v_BHTD
        return self.kv[layer_idx].append(k_BHTD, v_BHTD)

    def set_gdn(self, layer_idx: int, conv_BCW: torch.Tensor, recurrent_BHKV: torch.Tensor) -> None:
        """Store a GDN layer's state after a forward (the recurrent state is cast to ``state_dtype``)."""
        self.gdn[layer_idx] = GDNLayerState(conv_BCW, recurrent_BHKV.to(self.state_dtype))

    def reorder_cache(self, index_B: torch.Tensor) -> None:
        """Keep/reorder batch rows (beam search, dropping finished sequences)."""
        for s in self.gdn.values():
            s.conv_BCW, s.recurrent_BHKV = s.conv_BCW[index_B], s.recurrent_BHKV[index_B]
        for s in self.kv.values():
            s.k_BHSD, s.v_BHSD = s.k_BHSD[index_B], s.v_BHSD[index_B]
