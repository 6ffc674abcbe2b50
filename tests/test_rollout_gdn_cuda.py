"""The rollout GDN core on CUDA (hyrl's Triton kernels) equals its plain-torch CPU path, on vLLM-like cache views.

vLLM stores each layer's recurrent state as a strided view into shared pages (conv state first in every slot), so
the decode step is checked on such a view as well as on a contiguous cache. Shapes are the released 7B's GDN heads.
Runs as a script too (``python tests/test_rollout_gdn_cuda.py``) on GPU machines without pytest.
"""

from __future__ import annotations

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
H, K, V, S = 4, 96, 192, 9


def _decode_inputs(n: int = 5):
    dev = "cuda"
    q, k = torch.randn(n, H, K, device=dev), torch.randn(n, H, K, device=dev)
    v, g, beta = torch.randn(n, H, V, device=dev), -torch.rand(n, H, device=dev), 2 * torch.rand(n, H, device=dev)
    return q, k, v, g, beta, torch.tensor([6, 0, 3, 8, 2][:n], device=dev)


def _paged_state() -> torch.Tensor:
    """[S, H, K, V] fp32 view into pages of [conv bytes | state] per slot, like vLLM's MambaBase.bind_kv_cache."""
    conv = 256
    pages = torch.zeros(S, conv + H * K * V, device="cuda")
    pages[:, conv:] = 0.1 * torch.randn(S, H * K * V, device="cuda")
    return pages[:, conv:].view(S, H, K, V)


@pytest.mark.gpu
@pytest.mark.triton
@needs_cuda
@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_cuda_decode_step_equals_cpu(layout: str) -> None:
    from hyrl.rollout import gdn_core

    q, k, v, g, beta, slots = _decode_inputs()
    state = _paged_state() if layout == "paged" else 0.1 * torch.randn(S, H, K, V, device="cuda")
    ref_state = state.cpu().clone()
    o = gdn_core.gdn_step(q, k, v, g, beta, state, slots)
    ref = gdn_core.gdn_step(q.cpu(), k.cpu(), v.cpu(), g.cpu(), beta.cpu(), ref_state, slots.cpu())
    torch.testing.assert_close(o.cpu(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.cpu(), ref_state, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.triton
@needs_cuda
def test_cuda_prefill_equals_cpu() -> None:
    from hyrl.rollout import gdn_core

    cu = torch.tensor([0, 5, 70, 71], device="cuda")
    T = int(cu[-1])
    q, k = torch.randn(T, H, K, device="cuda"), torch.randn(T, H, K, device="cuda")
    v, g, beta = torch.randn(T, H, V, device="cuda"), -0.5 * torch.rand(T, H, device="cuda"), 2 * torch.rand(
        T, H, device="cuda")
    state = _paged_state()
    ref_state = state.cpu().clone()
    slots, has_init = torch.tensor([1, 4, 7], device="cuda"), torch.tensor([True, False, True], device="cuda")
    o = gdn_core.gdn_prefill(q, k, v, g, beta, state, cu, slots, has_init)
    ref = gdn_core.gdn_prefill(q.cpu(), k.cpu(), v.cpu(), g.cpu(), beta.cpu(), ref_state, cu.cpu(), slots.cpu(),
                               has_init.cpu())
    torch.testing.assert_close(o.cpu(), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.cpu(), ref_state, atol=1e-4, rtol=1e-4)


STOCK_SERVE = r'''
import sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=256)
arch = llm.llm_engine.model_config.hf_config.architectures
out = llm.generate(["12+34=", "7+8="], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
print("ARCH", arch, "TOKENS", [len(o.outputs[0].token_ids) for o in out])
'''


@pytest.mark.gpu
@pytest.mark.vllm
@needs_cuda
def test_stock_vllm_serves_a_hyrl_checkpoint(tmp_path) -> None:
    """A folder hyrl saved loads in vLLM with no hyrl plugin at all (``VLLM_PLUGINS=``): it names the stock
    ``OlmoHybridForCausalLM`` and holds the released weight layout."""
    import os
    import subprocess
    import sys

    from hyrl.model.presets import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    proc = subprocess.run([sys.executable, "-c", STOCK_SERVE, str(folder)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "VLLM_PLUGINS": "", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ARCH ['OlmoHybridForCausalLM'] TOKENS [6, 6]" in proc.stdout, proc.stdout[-2000:]


if __name__ == "__main__":
    torch.manual_seed(0)
    for layout in ("paged", "contiguous"):
        test_cuda_decode_step_equals_cpu(layout)
        print("decode", layout, "ok")
    test_cuda_prefill_equals_cpu()
    print("prefill ok")
