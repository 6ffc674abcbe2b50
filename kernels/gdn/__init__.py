"""Gated DeltaNet kernels: the fp32 reference and the fast paths checked against it (argument order q, k, v, g, beta)."""

from hyrl.kernels.gdn.reference import gdn_reference, l2norm

__all__ = ["gdn_reference", "l2norm"]
