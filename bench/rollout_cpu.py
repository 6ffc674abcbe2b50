"""Rollout throughput and memory on CPU: hyrl's vLLM plugin vs vLLM's stock hybrid paths, one table.

    python bench/rollout_cpu.py                       # all cases, ~3 min on 2 cores
    python bench/rollout_cpu.py --cases hyrl-fp32 qwen3next-stock-bf16 --max-tokens 64

Each case runs in its own process (fresh engine, honest peak RSS): build a tiny model folder, start an in-process
vLLM engine, warm up once, then time ``generate`` of ``--num-prompts`` prompts x ``--max-tokens`` sampled tokens.
Cases:
- hyrl-fp32 / hyrl-fp32-eager / hyrl-bf16: tiny Olmo Hybrid through hyrl's plugin (fp32 GDN state in every case).
- olmo-stock-fp32: the same model through vLLM 0.32's own OlmoHybridForCausalLM (fails on CPU; the error is shown).
- qwen3next-stock-bf16: a tiny Qwen3-Next (vLLM's native C++ GDN on CPU; bf16 only, needs a MoE layer).
Tokens/s counts generated tokens only (prefill included in the time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "hyrl-fp32": dict(model="olmo", dtype="float32", eager=False, env={}, extra={}),
    "hyrl-fp32-eager": dict(model="olmo", dtype="float32", eager=True, env={}, extra={}),
    "hyrl-bf16": dict(model="olmo", dtype="bfloat16", eager=False, env={}, extra={}),
    "olmo-stock-fp32": dict(model="olmo", dtype="float32", eager=True, env={"HYRL_VLLM_OLMO_HYBRID": "0"},
                            extra={"hf_overrides": {"architectures": ["OlmoHybridForCausalLM"]}}),
    "qwen3next-stock-bf16": dict(model="qwen3next", dtype="bfloat16", eager=False, env={}, extra={}),
}


def build_qwen3next(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Qwen3-Next (bf16, GDN head dim 64, one MoE layer) sharing the Olmo tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3NextConfig, Qwen3NextForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = Qwen3NextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=64,
        linear_value_head_dim=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96,
        shared_expert_intermediate_size=96, decoder_sparse_step=1, mlp_only_layers=[0, 1, 2],
        max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    Qwen3NextForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def run_case(name: str, work: Path, num_prompts: int, max_tokens: int) -> dict:
    """One measurement in this process (called in a child process by ``main``)."""
    import torch

    from hyrl.model.presets import build_tiny_model
    from hyrl.rollout.batch import Sampling
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.worker import RolloutWorker

    case = CASES[name]
    olmo = work / "olmo"
    if not olmo.exists():
        build_tiny_model(olmo)
    model = olmo if case["model"] == "olmo" else work / "qwen3next"
    if case["model"] == "qwen3next" and not model.exists():
        build_qwen3next(model, olmo)
    t0 = time.perf_counter()
    cfg = EngineConfig(model=str(model), run_dir=str(work / f"run_{name}"), dtype=case["dtype"],
                       enforce_eager=case["eager"], max_num_seqs=num_prompts, max_num_batched_tokens=512,
                       extra=case["extra"])
    worker = RolloutWorker(cfg)
    startup = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (32,), generator=g).tolist() for _ in range(num_prompts)]
    sampling = Sampling(max_tokens=max_tokens, ignore_eos=True)
    worker.generate(prompts[:4], Sampling(max_tokens=8, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    batch = worker.generate(prompts, sampling)
    seconds = time.perf_counter() - t0
    return {"case": name, "startup_s": startup, "tokens": batch.num_tokens, "gen_s": seconds,
            "tok_per_s": batch.num_tokens / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(name: str, work: Path, args: argparse.Namespace) -> dict:
    """Run one case in a fresh interpreter; a failure becomes a row with its last error line."""
    env = {**os.environ, **CASES[name]["env"], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work), "--num-prompts", str(args.num_prompts),
           "--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "error" in ln]
    return {"case": name, "error": (errors[-1] if errors else f"exit code {proc.returncode}")[-110:]}


def _table(rows: list[dict]) -> str:
    head = f"{'case':<22}{'startup s':>10}{'tokens':>8}{'gen s':>8}{'tok/s':>9}{'peak RSS MiB':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:<22}  FAILED: {r['error']}")
        else:
            lines.append(f"{r['case']:<22}{r['startup_s']:>10.1f}{r['tokens']:>8}{r['gen_s']:>8.2f}"
                         f"{r['tok_per_s']:>9.1f}{r['peak_rss_mib']:>14.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_case(args.child, args.work, args.num_prompts, args.max_tokens)), flush=True)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="hyrl_bench_"))
    rows = [_child(name, work, args) for name in args.cases]
    print(f"\nrollout on CPU ({args.num_prompts} prompts x {args.max_tokens} tokens, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); scratch {work}\n" + _table(rows))


if __name__ == "__main__":
    main()
