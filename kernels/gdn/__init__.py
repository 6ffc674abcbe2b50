"""Gated DeltaNet kernels: the fp32 reference and the fast paths checked against it (argument order q, k, v, g, beta).

``gdn_reference`` (CPU and any device) is the contract. ``chunk_gdn`` (training, Triton forward and backward) and
``fused_recurrent_gdn`` (decode, Triton, in-place fp32 state cache) need Triton; they are None when it is missing so
that ``import hyrl.kernels.gdn`` works everywhere. ``chunk_gdn_torch`` is the plain-torch chunked path, when present.
"""

from hyrl.kernels.gdn.reference import gdn_reference, l2norm

try:
    from hyrl.kernels.gdn.chunk import chunk_gdn
    from hyrl.kernels.gdn.recurrent import fused_recurrent_gdn
except ImportError:  # no triton on this machine: the reference (and chunk_gdn_torch) remain
    chunk_gdn = None
    fused_recurrent_gdn = None

try:
    from hyrl.kernels.gdn.torch_chunk import chunk_gdn_torch
except ImportError:  # written separately; absent until it lands
    chunk_gdn_torch = None

__all__ = ["chunk_gdn", "chunk_gdn_torch", "fused_recurrent_gdn", "gdn_reference", "l2norm"]
