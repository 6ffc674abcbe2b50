"""Compute kernels. Triton is imported only below this package; every kernel has a plain-PyTorch reference."""
