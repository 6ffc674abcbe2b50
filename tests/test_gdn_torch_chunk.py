"""chunk_gdn_torch == gdn_reference: output, final state and every gradient, on awkward shapes and packed batches.

Legend: B batch, T tokens, H heads, K/V head dims, N documents.
"""

from __future__ import annotations

import pytest
import torch

from hyrl.kernels.gdn.reference import gdn_reference
from hyrl.kernels.gdn.torch_chunk import chunk_gdn_torch

NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _inputs(B: int, T: int, H: int, K: int, V: int, n_states: int) -> dict[str, torch.Tensor]:
    """Random GDN inputs in the ranges the model produces (g <= 0, beta in [0, 2]), as leaves needing grad."""
    x = {
        "q": torch.randn(B, T, H, K),
        "k": torch.randn(B, T, H, K),
        "v": torch.randn(B, T, H, V),
        "g": -torch.rand(B, T, H) * 1.5,
        "beta": torch.rand(B, T, H) * 2.0,
        "initial_state": torch.randn(n_states, H, K, V) * 0.5,
    }
    return {n: t.requires_grad_() for n, t in x.items()}


def _run(fn, x: dict[str, torch.Tensor], cu_seqlens: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """Forward, back-propagate fixed random cotangents into o and the final state, return outputs and grads."""
    for t in x.values():
        t.grad = None
    o, final = fn(
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
        initial_state=x["initial_state"],
        output_final_state=True,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm=True,
    )
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (final * torch.randn(final.shape, generator=gen)).sum()
    loss.backward()
    return {"o": o.detach(), "final": final.detach(), **{f"d{n}": x[n].grad.clone() for n in NAMES}}


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for name, w in want.items():
        err = (got[name] - w).abs().max().item()
        tol = 1e-5 * max(1.0, w.abs().max().item())
        assert err <= 3 * tol if name.startswith("d") else err <= tol, f"{name}: max abs err {err:.2e} > tol"


@pytest.mark.parametrize("T", [1, 5, 16, 17, 33, 63, 64, 65, 130])  # short T: chunks of 2^ceil(log2 T)
@pytest.mark.parametrize(("K", "V"), [(32, 64), (16, 16)])
def test_chunk_equals_reference(T: int, K: int, V: int) -> None:
    x = _inputs(2, T, 2, K, V, n_states=2)
    _assert_close(_run(chunk_gdn_torch, x, None, seed=T), _run(gdn_reference, x, None, seed=T))


@pytest.mark.parametrize("lengths", [[1, 63, 1, 65], [130, 1], [64, 64, 2], [3, 9, 2]])
def test_chunk_varlen_equals_reference(lengths: list[int]) -> None:
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = _inputs(1, sum(lengths), 2, 32, 64, n_states=len(lengths))
    _assert_close(_run(chunk_gdn_torch, x, cu_seqlens, seed=1), _run(gdn_reference, x, cu_seqlens, seed=1))


def test_varlen_equals_per_document() -> None:
    """A packed batch gives each document exactly what it gets alone: no state crosses a boundary."""
    lengths = [5, 70, 1, 64]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = {n: t.detach() for n, t in _inputs(1, sum(lengths), 2, 16, 32, n_states=len(lengths)).items()}
    o_packed, final_packed = chunk_gdn_torch(
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
        initial_state=x["initial_state"],
        output_final_state=True,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm=True,
    )
    for n, (s, e) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        o_doc, final_doc = chunk_gdn_torch(
            *(x[name][:, s:e] for name in ("q", "k", "v", "g", "beta")),
            initial_state=x["initial_state"][n : n + 1],
            output_final_state=True,
            use_qk_l2norm=True,
        )
        torch.testing.assert_close(o_packed[:, s:e], o_doc, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(final_packed[n : n + 1], final_doc, atol=1e-6, rtol=1e-6)


def test_no_initial_state_and_no_final_state() -> None:
    """Defaults: zero initial state, final state only when asked for; bf16 inputs give a bf16 output."""
    x = {n: t.detach() for n, t in _inputs(1, 70, 2, 16, 32, n_states=1).items()}
    args = [x[n].bfloat16() for n in ("q", "k", "v")] + [x["g"], x["beta"]]
    o, final = chunk_gdn_torch(*args, use_qk_l2norm=True)
    o_ref, _ = gdn_reference(*args, use_qk_l2norm=True)
    assert final is None and o.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), o_ref.float(), atol=2e-2, rtol=2e-2)


def test_packed_batch_must_have_batch_one() -> None:
    x = _inputs(2, 4, 1, 8, 8, n_states=2)
    with pytest.raises(ValueError, match="batch of size 1"):
        chunk_gdn_torch(x["q"], x["k"], x["v"], x["g"], x["beta"], cu_seqlens=torch.tensor([0, 2, 4]))
