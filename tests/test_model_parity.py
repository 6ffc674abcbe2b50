"""hyrl's HybridForCausalLM against transformers' OlmoHybridForCausalLM (the oracle) and against itself.

Chain proved here (fp32, <= 1e-5): hyrl == transformers (3 configs, padded batches, gradients); packed == per
document; chunk GDN == recurrent GDN; prefill + cached decode == full forward. Legend: B batch, T tokens, V vocab.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM
from transformers.models.olmo_hybrid import modeling_olmo_hybrid

from hyrl.model.cache import HybridCache
from hyrl.model.olmo_hybrid import HybridForCausalLM, build_model

NOPE = {"rope_type": "default", "rope_theta": None}
CONFIGS = {
    # GQA attention (2 heads, 1 kv head, head_dim 32), GDN K 16 != V 32, RoPE on
    "gqa_k16_v32_rope": {"linear_key_head_dim": 16, "linear_value_head_dim": 32},
    # no RoPE (the released setting), GVA (4 value heads share 2 key heads), beta in [0, 1], attention first
    "nope_gva_k16_v16": {
        "rope_parameters": NOPE, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
        "linear_allow_neg_eigval": False, "num_key_value_heads": 2,
        "layer_types": ["full_attention", "linear_attention", "linear_attention", "full_attention"],
    },
    # 3 heads : 1 kv head, GDN K 24 / V 48, conv kernel 3, tied embeddings
    "gqa3_k24_v48_tied": {
        "hidden_size": 96, "num_attention_heads": 3, "linear_num_key_heads": 3, "linear_num_value_heads": 3,
        "linear_key_head_dim": 24, "linear_value_head_dim": 48, "linear_conv_kernel_dim": 3,
        "tie_word_embeddings": True,
    },
}  # fmt: skip


# transformers' OlmoHybrid picks its GDN and short-convolution kernels when its modeling module is imported: each
# module-level function named below is wrapped by `use_kernel_func_from_hub_with_fallback`, which calls FLA's (or
# causal_conv1d's) Triton kernel whenever that package is importable, even for CPU tensors ("Pointer argument ...
# cannot be accessed from Triton (cpu tensor?)" on a GPU machine with FLA). The oracle is meant to be transformers'
# readable torch reference on the CPU, so every test in this module runs with these names pointing at the torch
# functions they wrap (`__wrapped__`, set by functools.wraps). Without FLA installed (CPU CI) the wrappers already
# call those same functions, so nothing changes there.
HF_KERNEL_DISPATCHED = (
    "torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn", "causal_conv1d_update",
)  # fmt: skip


@pytest.fixture(autouse=True)
def oracle_on_torch_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HF_KERNEL_DISPATCHED:
        torch_fn = inspect.unwrap(getattr(modeling_olmo_hybrid, name))
        assert (torch_fn.__module__, torch_fn.__name__) == (modeling_olmo_hybrid.__name__, name), (
            f"transformers' {name} no longer unwraps to its torch reference: update this fixture"
        )
        monkeypatch.setattr(modeling_olmo_hybrid, name, torch_fn)


def tiny_config(**overrides: object) -> OlmoHybridConfig:
    """A 4-layer fp32 Olmo Hybrid (3 GDN + 1 attention by default), attention head_dim 32 (vLLM-CPU friendly)."""
    base = {
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "linear_num_key_heads": 2, "linear_num_value_heads": 2,
        "linear_key_head_dim": 16, "linear_value_head_dim": 32, "pad_token_id": 0, "eos_token_id": 1,
    }  # fmt: skip
    return OlmoHybridConfig(**{**base, **overrides})


def pair(config: OlmoHybridConfig) -> tuple[HybridForCausalLM, OlmoHybridForCausalLM]:
    """hyrl model with random HF init, and transformers' model holding the very same weights."""
    ours = build_model(config).eval()
    oracle = OlmoHybridForCausalLM(config).eval()
    oracle.load_state_dict(ours.state_dict(), strict=True)
    return ours, oracle


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_transformers(name: str) -> None:
    """Same logits as transformers on a full batch and on a right-padded one (real tokens only)."""
    config = tiny_config(**CONFIGS[name])
    ours, oracle = pair(config)
    ids_BT = torch.randint(2, config.vocab_size, (2, 80))
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[1, 50:] = 0
    with torch.no_grad():
        err_full = max_err(ours(ids_BT).logits, oracle(ids_BT).logits)
        ours_pad = ours(ids_BT, attention_mask=mask_BT).logits
        oracle_pad = oracle(ids_BT, attention_mask=mask_BT).logits
    err_pad = max(max_err(ours_pad[0], oracle_pad[0]), max_err(ours_pad[1, :50], oracle_pad[1, :50]))
    print(f"\n[{name}] max |logit diff| vs transformers: full {err_full:.2e}, padded {err_pad:.2e}")
    assert err_full <= 1e-5 and err_pad <= 1e-5
    assert torch.isfinite(ours_pad).all(), "padded positions must stay finite"


def test_gradients_match_transformers() -> None:
    """The learner's gradients equal transformers' (loss = HF's shifted cross-entropy)."""
    config = tiny_config(**CONFIGS["gqa_k16_v32_rope"])
    ours, oracle = pair(config)
    ids_BT = torch.randint(2, config.vocab_size, (2, 70))
    loss_ours = ours(ids_BT, labels=ids_BT).loss
    loss_oracle = oracle(ids_BT, labels=ids_BT).loss
    loss_ours.backward()
    loss_oracle.backward()
    assert abs(loss_ours.item() - loss_oracle.item()) <= 1e-5
    grads_oracle = dict(oracle.named_parameters())
    for name, p in ours.named_parameters():
        g_ref = grads_oracle[name].grad
        assert max_err(p.grad, g_ref) <= 1e-5 * max(1.0, g_ref.abs().max().item()), name


def test_varlen_equals_per_document() -> None:
    """A packed row (cu_seqlens, or TRL padding-free position_ids) scores each document as if it were alone."""
    config = tiny_config(**CONFIGS["gqa_k16_v32_rope"])
    model = build_model(config).eval()
    lengths = [5, 70, 1, 20]
    docs = [torch.randint(2, config.vocab_size, (1, n)) for n in lengths]
    packed_1T = torch.cat(docs, dim=1)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    position_ids_1T = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        by_cu = model(packed_1T, cu_seqlens=cu_seqlens).logits
        by_pos = model(packed_1T, position_ids=position_ids_1T).logits
        by_trl = model(
            packed_1T, position_ids=position_ids_1T, cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens
        ).logits
        alone = torch.cat([model(d).logits for d in docs], dim=1)
    print(f"\npacked vs per-document max |logit diff|: {max_err(by_cu, alone):.2e}")
    assert max(max_err(by_cu, alone), max_err(by_pos, alone), max_err(by_trl, alone)) <= 1e-5
    with torch.no_grad():  # the same row without packing info leaks state: the test can tell the difference
        assert max_err(model(packed_1T).logits, alone) > 1e-3


def test_chunk_equals_recurrent() -> None:
    config = tiny_config(**CONFIGS["nope_gva_k16_v16"])
    model = build_model(config).eval()
    ids_BT = torch.randint(2, config.vocab_size, (2, 130))
    with torch.no_grad():
        model.set_gdn_backend("chunk")
        chunk = model(ids_BT).logits
        model.set_gdn_backend("recurrent")
        recurrent = model(ids_BT).logits
    assert max_err(chunk, recurrent) <= 1e-5


@pytest.mark.parametrize("name", ["gqa_k16_v32_rope", "gqa3_k24_v48_tied"])
def test_prefill_then_decode_equals_full_forward(name: str) -> None:
    """Prefill 40, continue with a 30-token chunk, then decode 10 tokens one at a time: same logits as one forward."""
    config = tiny_config(**CONFIGS[name])
    model = build_model(config).eval()
    ids_BT = torch.randint(2, config.vocab_size, (2, 80))
    cache = HybridCache.from_config(config)
    with torch.no_grad():
        full = model(ids_BT).logits
        steps = [model(ids_BT[:, :40], cache=cache).logits, model(ids_BT[:, 40:70], cache=cache).logits]
        steps += [model(ids_BT[:, t : t + 1], cache=cache).logits for t in range(70, 80)]
    err = max_err(torch.cat(steps, dim=1), full)
    print(f"\n[{name}] prefill+decode vs full max |logit diff|: {err:.2e}")
    assert err <= 1e-5 and cache.get_seq_length() == 80


def test_left_padded_prefill_then_decode_equals_unpadded() -> None:
    """Left padding (as generate() batches prompts) changes nothing for the real tokens, through prefill and decode."""
    config = tiny_config(**CONFIGS["nope_gva_k16_v16"])  # no RoPE: positions shifted by the padding do not matter
    model = build_model(config).eval()
    ids_BT = torch.randint(2, config.vocab_size, (2, 50))
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[0, :7] = 0
    padded_BT = ids_BT.masked_fill(mask_BT == 0, config.pad_token_id)
    cache = HybridCache.from_config(config)
    with torch.no_grad():
        steps = [model(padded_BT[:, :40], attention_mask=mask_BT[:, :40], cache=cache).logits]
        steps += [
            model(padded_BT[:, t : t + 1], attention_mask=mask_BT[:, : t + 1], cache=cache).logits
            for t in range(40, 50)
        ]
        alone = model(ids_BT[:1, 7:]).logits
    assert max_err(torch.cat(steps, dim=1)[:1, 7:], alone) <= 1e-5


def test_generate_equals_greedy_forward() -> None:
    """HF generate() runs on the HybridCache and picks the same tokens as greedy full forwards."""
    config = tiny_config()
    model = build_model(config).eval()
    seq_BT = torch.randint(2, config.vocab_size, (2, 9))
    generated = model.generate(seq_BT, max_new_tokens=6, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        for _ in range(6):
            seq_BT = torch.cat([seq_BT, model(seq_BT).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq_BT)


def _decode_logprobs(model: HybridForCausalLM, ids_BT: torch.Tensor, prompt: int) -> torch.Tensor:
    """Log-probs of the given continuation tokens, scored by prefill then token-by-token cached decode."""
    cache = HybridCache.from_config(model.config)  # state dtype from config.gdn_state_dtype
    logits = [model(ids_BT[:, :prompt], cache=cache).logits[:, -1:]]
    logits += [model(ids_BT[:, t : t + 1], cache=cache).logits for t in range(prompt, ids_BT.shape[1] - 1)]
    logp_BTV = torch.cat(logits, dim=1).log_softmax(-1)
    return logp_BTV.gather(-1, ids_BT[:, prompt:, None])[..., 0]


def test_bf16_state_drift_bounded() -> None:
    """A bf16 recurrent state drifts from the fp32 one over a decode; fp32 decode matches the training forward."""
    config = tiny_config(**CONFIGS["gqa_k16_v32_rope"])
    model = build_model(config).eval()
    ids_BT = torch.randint(2, config.vocab_size, (2, 200))
    prompt = 72
    with torch.no_grad():
        train = model(ids_BT).logits[:, prompt - 1 : -1].log_softmax(-1).gather(-1, ids_BT[:, prompt:, None])[..., 0]
        fp32 = _decode_logprobs(model, ids_BT, prompt)
        config.gdn_state_dtype = "bfloat16"
        bf16 = _decode_logprobs(model, ids_BT, prompt)
    gap_fp32, gap_bf16 = max_err(fp32, train), max_err(bf16, fp32)
    mean_bf16 = (bf16 - fp32).abs().mean().item()
    print(f"\nlogprob gap over 128 decoded tokens: fp32-state vs training forward max {gap_fp32:.2e}; "
          f"bf16-state vs fp32-state max {gap_bf16:.2e}, mean {mean_bf16:.2e}")  # fmt: skip
    assert gap_fp32 <= 1e-5
    assert 0.0 < gap_bf16 < 0.05


def test_released_7b_builds_on_meta() -> None:
    """The released 7B shape (32 layers, d 3840, GDN K 96 / V 192) builds on meta with transformers' param count."""
    config = OlmoHybridConfig()  # transformers' defaults are the released 7B
    assert (config.num_hidden_layers, config.hidden_size, config.linear_key_head_dim) == (32, 3840, 96)
    assert config.linear_value_head_dim == 192
    ours = build_model(config, device="meta")
    with torch.device("meta"):
        oracle = OlmoHybridForCausalLM(config)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_oracle = sum(p.numel() for p in oracle.parameters())
    print(f"\nreleased Olmo Hybrid 7B config: {n_ours:,} parameters ({n_ours / 1e9:.3f} B)")
    assert n_ours == n_oracle
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in oracle.named_parameters()}


def test_gradient_checkpointing_same_grads() -> None:
    config = tiny_config()
    model = build_model(config).train()
    ids_BT = torch.randint(2, config.vocab_size, (2, 40))
    model(ids_BT, labels=ids_BT).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids_BT, labels=ids_BT).loss.backward()
    for n, p in model.named_parameters():
        assert max_err(p.grad, plain[n]) <= 1e-6, n


def test_logits_to_keep_and_packed_with_cache_rejected() -> None:
    config = tiny_config()
    model = build_model(config).eval()
    ids_BT = torch.randint(2, config.vocab_size, (1, 12))
    with torch.no_grad():
        assert max_err(model(ids_BT, logits_to_keep=3).logits, model(ids_BT).logits[:, -3:]) <= 1e-6
        with pytest.raises(ValueError, match="cu_seqlens"):
            model(ids_BT, cu_seqlens=torch.tensor([0, 5, 12]), cache=HybridCache.from_config(config))


def test_trl_fused_head_on_packed_batch_equals_per_document() -> None:
    """TRL's learner path (fused LM head, padding-free batch) scores each document as if alone: no 0.23-KL leak."""
    pytest.importorskip("trl", reason="TRL is not installed (the GPU image has none)")
    from trl.trainer.utils import add_fused_lm_head

    config = tiny_config(**CONFIGS["gqa_k16_v32_rope"])
    model = build_model(config).eval()
    add_fused_lm_head(model)
    lengths = [9, 66, 3]
    docs = [torch.randint(2, config.vocab_size, (1, n)) for n in lengths]
    packed_1T = torch.cat(docs, dim=1)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    position_ids_1T = torch.cat([torch.arange(n) for n in lengths])[None]
    labels_1T = packed_1T.clone()
    labels_1T[0, cu_seqlens[:-1]] = -100  # a document's first token is not predicted from the previous document
    with torch.no_grad():
        out = model(
            input_ids=packed_1T, position_ids=position_ids_1T, cu_seq_lens_q=cu_seqlens, labels=labels_1T,
            fused_lm_head=True,
        )  # fmt: skip
        alone = [model(d).logits[0, :-1].log_softmax(-1).gather(-1, d[0, 1:, None])[:, 0] for d in docs]
    fused_T = out.log_probs[0]
    starts = cu_seqlens[:-1].tolist()
    got = [fused_T[s : s + n - 1] for s, n in zip(starts, lengths, strict=True)]
    assert max(max_err(g, a) for g, a in zip(got, alone, strict=True)) <= 1e-5
