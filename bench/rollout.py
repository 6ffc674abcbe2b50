"""Rollout throughput, cache memory per sequence and learner-vs-rollout mismatch on one GPU, one table: hyrl's vLLM
plugin (Olmo Hybrid 7B shape, random weights, bf16 weights, fp32 GDN state) with CUDA graphs vs the same with
``enforce_eager`` vs a dense Olmo-3-7B-shape model (vLLM's own Olmo3ForCausalLM) with CUDA graphs.

    python bench/rollout.py                                            # 7B shapes, prompts 1k/8k/32k, 1k generated
    python bench/rollout.py --preset tiny --contexts 256,1024 --max-tokens 64 --max-batch 32    # smoke run

Each case runs in its own process (fresh engine, honest memory). The learner model (hyrl's HybridForCausalLM, or
transformers' Olmo3ForCausalLM for the dense case; HF random init, bf16, seed 0) is built on the GPU and parked on
the CPU; an in-process vLLM engine (hyrl's ``make_llm``) starts from a folder holding only config.json
(``load_format="dummy"``) and then receives the learner's weights through hyrl's update path (``hyrl_load``).
Per prompt length P the batch is as many sequences of P + G tokens as the engine's cache holds (at most
``--max-batch``): B random prompts x G sampled tokens (``ignore_eos``, temperature 1) in one ``generate``.
tok/s = generated tokens / wall time (prefill included). Cache MiB/seq = the engine's cache blocks for P + G tokens in
every cache group (attention pages, the GDN state slot, sliding windows) x bytes per block, read from the engine's
own KV cache config. Mismatch: ``--mismatch-seqs`` sequences at the first P are sampled with log-probs, then the
learner (bf16, its layers streamed to the GPU one at a time, so the engine's memory needs no freeing) scores the same
tokens: mean and max of the k3 KL estimate and max |delta log-prob| (``hyrl.rollout.mismatch``).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = {
    "hybrid-graphs": dict(kind="hybrid", eager=False),
    "hybrid-eager": dict(kind="hybrid", eager=True),
    "dense-graphs": dict(kind="dense", eager=False),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# allenai/Olmo-3-1025-7B's shape (3 sliding-window layers of 4096 tokens to 1 full-attention layer; no YaRN here).
OLMO3_7B = dict(vocab_size=100278, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=65536, sliding_window=4096,
                rope_theta=500000.0, rms_norm_eps=1e-6)


def model_config(kind: str, preset: str):
    """The HF config of a case: hyrl's Olmo Hybrid preset, or Olmo 3 (7B shape, or the preset's widths if small)."""
    from transformers import Olmo3Config

    from hyrl.model.presets import PRESETS, preset_config

    p = PRESETS[preset]
    vocab = p.get("vocab_size", 512)
    if kind == "hybrid":
        cfg = preset_config(preset, vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            tie_word_embeddings=False)
        cfg.architectures = ["HybridForCausalLM"]
        return cfg
    dims = OLMO3_7B if preset == "olmo-hybrid-7b" else dict(
        vocab_size=vocab, hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"], max_position_embeddings=p["max_position_embeddings"],
        sliding_window=min(4096, p["max_position_embeddings"] // 4))
    cfg = Olmo3Config(**dims, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    cfg.architectures = ["Olmo3ForCausalLM"]
    return cfg


def build_learner(cfg, kind: str):
    """Random-init learner in bf16 on the GPU (fast init), then parked on the CPU."""
    import torch

    from hyrl.model.loading import new_causal_lm

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = new_causal_lm(cfg, "hyrl") if kind == "hybrid" else new_causal_lm(cfg, "hf")
    finally:
        torch.set_default_dtype(default)
    return model.to(torch.bfloat16).eval().to("cpu")


def cache_per_seq(llm, tokens: int) -> tuple[int, int] | None:
    """(bytes of cache one sequence of ``tokens`` holds, sequences of that length the cache fits), from the engine's
    KV cache config (in-process engines only); None where the engine's internals differ from vLLM 0.26's."""
    try:
        kvc = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
    except AttributeError:
        return None
    layers_per_group = max(len(g.layer_names) for g in kvc.kv_cache_groups)
    page = kvc.kv_cache_groups[0].kv_cache_spec.page_size_bytes
    blocks = 0
    for g in kvc.kv_cache_groups:
        spec = g.kv_cache_spec
        if "Mamba" in type(spec).__name__:
            blocks += 1
            continue
        span = tokens
        if getattr(spec, "sliding_window", None):
            span = min(tokens, spec.sliding_window - 1 + spec.block_size)
        blocks += -(-span // spec.block_size)
    return blocks * page * layers_per_group, kvc.num_blocks // blocks


class _Streamed:
    """Forward of an HF causal LM kept on the CPU: each decoder layer visits the GPU only while it runs."""

    def __init__(self, model) -> None:
        import torch

        self.model = model
        for name in ("embed_tokens", "norm"):
            getattr(model.model, name).to(DEVICE)
        model.lm_head.to(DEVICE)
        for mod in model.model.modules():  # rotary tables etc. live outside the layers
            if mod is not model.model and not isinstance(mod, torch.nn.ModuleList) and mod not in model.model.layers:
                for b_name, buf in list(mod.named_buffers(recurse=False)):
                    setattr(mod, b_name, buf.to(DEVICE))
        for layer in model.model.layers:
            layer.register_forward_pre_hook(lambda m, a, kw: m.to(DEVICE) and None, with_kwargs=True)
            layer.register_forward_hook(lambda m, a, o: m.to("cpu") and None)

    def logprobs(self, prompt: list[int], completion: list[int]) -> list[float]:
        import torch

        ids = torch.tensor([prompt + completion], device=DEVICE)
        with torch.no_grad():
            # .forward, not __call__: vLLM's compile decorator may have patched __call__ of transformers' class
            h = self.model.model.forward(input_ids=ids).last_hidden_state[0, len(prompt) - 1 : -1]
            logits = self.model.lm_head(h).float()
            lp = logits.log_softmax(-1).gather(-1, torch.tensor(completion, device=DEVICE)[:, None])[:, 0]
        return lp.cpu().tolist()


def run_case(name: str, args: argparse.Namespace) -> dict:
    """One case in this process (called in a child process by ``main``): startup, throughput rows, mismatch."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from hyrl.rollout.engine import EngineConfig, make_llm
    from hyrl.rollout.mismatch import mismatch

    case = CASES[name]
    contexts = [int(x) for x in args.contexts.split(",")]
    gen = args.max_tokens
    folder = args.work / f"model_{case['kind']}"
    cfg = model_config(case["kind"], args.preset)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(folder))  # config only: the engine starts from dummy weights, the learner's come next

    t0 = time.perf_counter()
    learner = build_learner(cfg, case["kind"])
    learner_s = time.perf_counter() - t0
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if s <= args.max_batch]
    ecfg = EngineConfig(
        model=str(folder), run_dir=str(args.work / f"run_{name}"), dtype="bfloat16", state_dtype="float32",
        max_model_len=max(contexts) + gen + 16, max_num_seqs=args.max_batch,
        max_num_batched_tokens=args.prefill_chunk, enforce_eager=case["eager"],
        gpu_memory_utilization=args.gpu_memory_utilization,
        extra={"load_format": "dummy", "skip_tokenizer_init": True,
               **({} if case["eager"] else {"compilation_config": {"cudagraph_capture_sizes": sizes}})},
    )
    t0 = time.perf_counter()
    llm = make_llm(ecfg)
    startup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    named = [(n, p.detach()) for n, p in learner.named_parameters()]
    llm.collective_rpc("hyrl_load", args=(named,))
    llm.reset_prefix_cache()
    push_s = time.perf_counter() - t0
    print(f"[{name}] learner {learner_s:.1f}s, engine {startup_s:.1f}s, weights pushed {push_s:.1f}s", flush=True)

    vocab = cfg.vocab_size
    g = torch.Generator().manual_seed(1)

    def prompts(n: int, length: int) -> list:
        return [TokensPrompt(prompt_token_ids=torch.randint(10, vocab - 10, (length,), generator=g).tolist())
                for _ in range(n)]

    def params(tokens: int) -> SamplingParams:  # no per-request seed: it would take vLLM's slower sampling path
        return SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=1.0, logprobs=0,
                              detokenize=False)

    llm.generate(prompts(2, 32), params(8), use_tqdm=False)  # warm-up (kernels, first-call paths)
    rows = []
    for ctx in contexts:
        per_seq = cache_per_seq(llm, ctx + gen)
        fits = per_seq[1] if per_seq else args.max_batch
        batch = min(args.max_batch, fits)
        row = {"case": name, "prompt": ctx, "batch": batch, "fits": fits,
               "cache_mib_per_seq": per_seq[0] / 2**20 if per_seq else None}
        if batch < 1:
            rows.append({**row, "error": "no sequence of this length fits"})
            continue
        t0 = time.perf_counter()
        outs = llm.generate(prompts(batch, ctx), params(gen), use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append({**row, "gen_tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds})
        print(f"[{name}] {rows[-1]}", flush=True)

    mm = None
    if args.mismatch_seqs:
        ctx = contexts[0]
        outs = llm.generate(prompts(args.mismatch_seqs, ctx), params(gen), use_tqdm=False)
        prompt_ids = [list(o.prompt_token_ids) for o in outs]
        comp_ids = [list(o.outputs[0].token_ids) for o in outs]
        rollout_lp = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                      for o in outs]
        del llm
        import gc

        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        scorer = _Streamed(learner)
        learner_lp = [scorer.logprobs(p, c) for p, c in zip(prompt_ids, comp_ids)]
        m = mismatch(rollout_lp, learner_lp)
        mm = {"prompt": ctx, "seqs": args.mismatch_seqs, "tokens": m.num_tokens, "kl_mean": m.kl_mean,
              "kl_max": m.kl_max, "max_abs_delta": m.max_abs_delta, "mean_abs_delta": m.mean_abs_delta,
              "score_s": time.perf_counter() - t0}
        print(f"[{name}] mismatch {mm}", flush=True)
    return {"case": name, "startup_s": startup_s, "push_s": push_s, "rows": rows, "mismatch": mm}


def _child(name: str, args: argparse.Namespace) -> dict:
    """Run one case in a fresh interpreter, its output in ``--log-dir``; a failure becomes a row with its reason."""
    cmd = [sys.executable, __file__, "--child", name, "--work", str(args.work), *args.passthrough]
    log = args.log_dir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = log.read_text(errors="replace")
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    errors = [ln for ln in text.splitlines() if "Error" in ln or "error" in ln]
    why = errors[-1] if errors else f"exit {rc}"
    return {"case": name, "error": f"{why[-150:]} (after {time.perf_counter() - t0:.0f} s; log {log})"}


def _table(results: list[dict]) -> str:
    head = ("| case | prompt | batch (fits) | gen tokens | s | tok/s | cache MiB/seq | startup s | KL mean (k3) | "
            "KL max | max abs dlogp |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | FAILED: {r['error']} |")
            continue
        mm = r.get("mismatch") or {}
        for row in r["rows"]:
            mib = f"{row['cache_mib_per_seq']:.4g}" if row.get("cache_mib_per_seq") is not None else "n/a"
            kl = ("| " + " | ".join([f"{mm['kl_mean']:.2e}", f"{mm['kl_max']:.2e}", f"{mm['max_abs_delta']:.3f}"])
                  + " |") if mm.get("prompt") == row["prompt"] else "| | | |"
            if "error" in row:
                lines.append(f"| {r['case']} | {row['prompt']} | 0 ({row['fits']}) | | | {row['error']} | {mib} | "
                             f"{r['startup_s']:.0f} {kl}")
                continue
            lines.append(f"| {r['case']} | {row['prompt']} | {row['batch']} ({row['fits']}) | {row['gen_tokens']} | "
                         f"{row['seconds']:.1f} | {row['tok_per_s']:.0f} | {mib} | {r['startup_s']:.0f} {kl}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--preset", default="olmo-hybrid-7b")
    ap.add_argument("--contexts", default="1024,8192,32768", help="prompt lengths (tokens)")
    ap.add_argument("--max-tokens", type=int, default=1024, help="generated tokens per sequence")
    ap.add_argument("--max-batch", type=int, default=256, help="at most this many sequences per generate")
    ap.add_argument("--prefill-chunk", type=int, default=8192, help="max_num_batched_tokens (chunked prefill)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--mismatch-seqs", type=int, default=8, help="sequences scored by the learner (0: none)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--log-dir", type=Path, default=None, help="per-case logs (default: the scratch folder)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--watchdog", type=int, default=0, help="dump every thread's stack every N s (0: off)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.watchdog and args.child:
        faulthandler.dump_traceback_later(args.watchdog, repeat=True, file=sys.stderr)
    if args.child:
        result = run_case(args.child, args)
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # skip vLLM's and Ray's atexit teardown: the numbers are out
    args.work = args.work or Path(tempfile.mkdtemp(prefix="hyrl_bench_rollout_"))
    args.log_dir = args.log_dir or args.work
    args.log_dir.mkdir(parents=True, exist_ok=True)
    skip = {"--cases", "--work", "--log-dir", "--timeout"}
    argv, args.passthrough = sys.argv[1:], []
    i = 0
    while i < len(argv):  # forward every option but the parent's own
        if argv[i] in skip:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        args.passthrough.append(argv[i])
        i += 1
    results = []
    for name in args.cases:
        results.append(_child(name, args))
        print(json.dumps(results[-1]), flush=True)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    try:
        import vllm

        versions = f"vllm {vllm.__version__}, torch {torch.__version__}"
    except ImportError:
        versions = f"torch {torch.__version__}"
    print(f"\n# rollout: {args.preset}, prompts {args.contexts} + {args.max_tokens} generated, bf16 weights, fp32 GDN "
          f"state, {device}, {versions}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(_table(results))


if __name__ == "__main__":
    main()
