"""GDN kernels vs FLA 0.6 on one GPU: chunked forward, backward, and decode.

Run from the repository root (H100; FLA carried as wheels, see bench/README.md):
    python bench/gdn.py                 # the table: training rows and decode rows, ours and FLA in the same run;
                                        # also appended as records to bench/results/gdn.json (--no-record: not)
    python bench/gdn.py --rows decode   # only the decode rows (or --rows train)
    python bench/gdn.py --profile       # per-kernel CUDA time, ours and FLA, K/V = 96/192
    python bench/gdn.py --sweep         # per-kernel time for each (num_warps, num_stages) and sequential V block

Training rows: B*T = 32k tokens (B = 32768 // T; T = 64k runs one 64k sequence), H = 30, bf16 inputs, q/k l2norm
in the kernel, no initial or final state. Decode rows: one token per sequence for B sequences, fp32 state cache.

FLOPs counted (dense matrix products of the chunked algorithm, C = 64 the chunk, per token and head; the causal
C x C products are counted in full, and the same count is used for FLA so TFLOP/s compare like for like):
    forward  = 6CK + 4CV + 6KV        (K K^T, W, U; E = U - W S and S' += K^T E; Q S, Q K^T, A E)
    backward = 16CK + 8CV + 12KV + 4C^2
Decode moves at least the state twice (read + write): 2 * B*H*K*V*4 bytes; achieved bandwidth = those bytes / time,
compared with a device-to-device copy measured in the same run (the state-traffic floor).
Correctness beside each row: max over o and the grads of q, k, v, g, beta of ||ours - FLA|| / ||FLA||.

FLA 0.6 refuses its gated backward on Hopper with Triton >= 3.4, < 3.7.1 (its issue #640: chunk_bwd_dqkwg gives
wrong results there). The GPU image has Triton 3.6, so the guard is switched off here to time FLA's backward; its
gradients may then be wrong, which the error column shows. Ours is checked against the fp32 reference by
tests/test_gdn_kernels.py on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
import triton
from results import append_records, run_info  # bench/results.py (a script's folder is first on sys.path)

from hyrl.kernels.gdn import chunk as chunk_mod
from hyrl.kernels.gdn.chunk import chunk_gdn
from hyrl.kernels.gdn.recurrent import fused_recurrent_gdn

C, H, TOKENS = 64, 30, 32768
NAN = float("nan")


def flops(K: int, V: int, tokens: int) -> tuple[float, float]:
    fwd = 6 * C * K + 4 * C * V + 6 * K * V
    bwd = 16 * C * K + 8 * C * V + 12 * K * V + 4 * C * C
    return fwd * tokens * H, bwd * tokens * H


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def bench(fn, rep_ms: int = 100) -> float:
    return triton.testing.do_bench(fn, warmup=20, rep=rep_ms, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second, in TB/s."""
    x = torch.empty(2**29, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / bench(lambda: y.copy_(x)) / 1e9


def load_fla():
    try:
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except ImportError as e:
        print(f"FLA not importable ({e}); FLA columns left empty", flush=True)
        return None, None
    fla_chunk_o.TRITON_ABOVE_3_7_1 = True  # see the module docstring (FLA issue #640)
    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def train_inputs(B: int, T: int, K: int, V: int):
    dev, dt = "cuda", torch.bfloat16
    q, k = torch.randn(B, T, H, K, device=dev, dtype=dt), torch.randn(B, T, H, K, device=dev, dtype=dt)
    v = torch.randn(B, T, H, V, device=dev, dtype=dt)
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3).to(dt)  # decays mostly near 1, as in trained models
    beta = (2 * torch.sigmoid(torch.randn(B, T, H, device=dev))).to(dt)
    do = torch.randn(B, T, H, V, device=dev, dtype=dt)
    return [x.requires_grad_(True) for x in (q, k, v, g, beta)], do


def ours(q, k, v, g, beta):
    return chunk_gdn(q, k, v, g, beta, use_qk_l2norm=True)[0]


def fla_fn(fla_chunk):
    return lambda q, k, v, g, beta: fla_chunk(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)[0]


def time_train(fn, xs, do) -> tuple[torch.Tensor, list[torch.Tensor], float, float]:
    """Output and grads once, then the median forward and backward times (backward through one kept graph)."""
    o = fn(*xs)
    grads = [x.detach() for x in torch.autograd.grad(o, xs, do)]
    ms_f = bench(lambda: fn(*xs))
    o = fn(*xs)
    ms_b = bench(lambda: torch.autograd.grad(o, xs, do, retain_graph=True))
    return o.detach(), grads, ms_f, ms_b


def train_row(K: int, V: int, T: int, fla_chunk) -> dict:
    B = max(1, TOKENS // T)
    torch.manual_seed(0)
    xs, do = train_inputs(B, T, K, V)
    o, grads, f_ms, b_ms = time_train(ours, xs, do)
    fl_f, fl_b = flops(K, V, B * T)
    row = {"kind": "train", "K": K, "V": V, "B": B, "T": T, "fwd_ms": f_ms, "bwd_ms": b_ms,
           "fwd_tflops": fl_f / f_ms / 1e9, "bwd_tflops": fl_b / b_ms / 1e9}
    if fla_chunk is not None:
        try:
            o2, grads2, f2, b2 = time_train(fla_fn(fla_chunk), xs, do)
            errs = [rel(o, o2)] + [rel(a, b) for a, b in zip(grads, grads2, strict=True)]
            row |= {"fla_fwd_ms": f2, "fla_bwd_ms": b2, "fwd_x": f2 / f_ms, "bwd_x": b2 / b_ms,
                    "total_x": (f2 + b2) / (f_ms + b_ms), "err_vs_fla": max(errs),
                    "err_o_dq_dk_dv_dg_db": [round(e, 5) for e in errs]}
        except Exception as e:  # report and keep going
            row["fla_error"] = repr(e)[:300]
    return row


def decode_row(K: int, V: int, B: int, bw: float, fla_rec) -> dict:
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    q, k = torch.randn(B, 1, H, K, device=dev, dtype=dt), torch.randn(B, 1, H, K, device=dev, dtype=dt)
    v = torch.randn(B, 1, H, V, device=dev, dtype=dt)
    g = F.logsigmoid(torch.randn(B, 1, H, device=dev) + 3).to(dt)
    beta = (2 * torch.sigmoid(torch.randn(B, 1, H, device=dev))).to(dt)
    s0 = 0.1 * torch.randn(B, H, K, V, device=dev)
    state, work = s0.clone(), s0.clone()
    o = fused_recurrent_gdn(q, k, v, g, beta, state=state, use_qk_l2norm=True)
    ms = bench(lambda: fused_recurrent_gdn(q, k, v, g, beta, state=work, use_qk_l2norm=True))
    nbytes = 2 * B * H * K * V * 4
    row = {"kind": "decode", "K": K, "V": V, "B": B, "ms": ms, "tbps": nbytes / ms / 1e9,
           "floor_frac": nbytes / ms / 1e9 / bw}
    if fla_rec is not None:
        try:
            def run():
                return fla_rec(q, k, v, g=g, beta=beta, initial_state=s0, output_final_state=True,
                               use_qk_l2norm_in_kernel=True)
            o2, s2 = run()
            ms2 = bench(run)
            row |= {"fla_ms": ms2, "x": ms2 / ms, "err_vs_fla": max(rel(o, o2), rel(state, s2))}
        except Exception as e:
            row["fla_error"] = repr(e)[:300]
    return row


def print_tables(rows: list[dict]) -> None:
    print("\n| K/V | B x T | fwd ms | bwd ms | fwd TF/s | bwd TF/s | FLA fwd ms | FLA bwd ms | fwd x | bwd x | "
          "fwd+bwd x | err vs FLA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "train"):
        print(f"| {r['K']}/{r['V']} | {r['B']}x{r['T']} | {r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} | "
              f"{r['fwd_tflops']:.1f} | {r['bwd_tflops']:.1f} | {r.get('fla_fwd_ms', NAN):.3f} | "
              f"{r.get('fla_bwd_ms', NAN):.3f} | {r.get('fwd_x', NAN):.2f} | {r.get('bwd_x', NAN):.2f} | "
              f"{r.get('total_x', NAN):.2f} | {r.get('err_vs_fla', NAN):.1e} |")
    print("\n| K/V | B | decode ms | TB/s | of copy BW | FLA ms | x FLA | err vs FLA |")
    print("|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "decode"):
        print(f"| {r['K']}/{r['V']} | {r['B']} | {r['ms']:.4f} | {r['tbps']:.2f} | {r['floor_frac']:.0%} | "
              f"{r.get('fla_ms', NAN):.4f} | {r.get('x', NAN):.2f} | {r.get('err_vs_fla', NAN):.1e} |")


def to_records(rows: list[dict], copy_tbps: float, info: dict) -> list[dict]:
    """The table's rows as flat records for bench/results/gdn.json: the three speed-ups over FLA per training row
    (x = FLA ms / our ms, higher is better; left out where FLA did not run) and each decode row's share of the copy
    bandwidth, each with its shape and the raw times it came from. ``info`` is ``run_info``'s."""
    out = []
    for r in rows:
        err = {"err_vs_fla": r["err_vs_fla"]} if "err_vs_fla" in r else {}
        if r["kind"] == "train" and "fla_fwd_ms" in r:
            shape = {"K": r["K"], "V": r["V"], "B": r["B"], "T": r["T"], "H": H}
            for name, ours_ms, fla_ms in (
                ("gdn_fwd_x_fla", r["fwd_ms"], r["fla_fwd_ms"]),
                ("gdn_bwd_x_fla", r["bwd_ms"], r["fla_bwd_ms"]),
                ("gdn_fwd_bwd_x_fla", r["fwd_ms"] + r["bwd_ms"], r["fla_fwd_ms"] + r["fla_bwd_ms"]),
            ):
                out.append({"name": name, "value": fla_ms / ours_ms, "unit": "x (FLA ms / ours ms)", **info,
                            **shape, "ours_ms": ours_ms, "fla_ms": fla_ms, **err})  # fmt: skip
        elif r["kind"] == "decode":
            out.append({"name": "gdn_decode_copy_bw_frac", "value": r["floor_frac"],
                        "unit": "fraction of copy bandwidth", **info, "K": r["K"], "V": r["V"], "batch": r["B"],
                        "H": H, "ours_ms": r["ms"], "fla_ms": r.get("fla_ms"), "tbps": r["tbps"],
                        "copy_tbps": copy_tbps, **err})  # fmt: skip
    return out


def kernel_times(fn, xs, do, reps: int = 5) -> dict[str, float]:
    """Mean CUDA ms per forward+backward, per kernel name, from the torch profiler."""
    o = fn(*xs)
    torch.autograd.grad(o, xs, do)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            o = fn(*xs)
            torch.autograd.grad(o, xs, do)
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.key.split("(")[0].strip():
            out[e.key[:60]] += t / 1e3 / reps
    return dict(out)


def profile(fla_chunk) -> None:
    for T in (4096, 65536):
        B = max(1, TOKENS // T)
        xs, do = train_inputs(B, T, 96, 192)
        for name, fn in (("ours", ours), ("fla", None if fla_chunk is None else fla_fn(fla_chunk))):
            if fn is None:
                continue
            kt = kernel_times(fn, xs, do)
            top = sorted(kt.items(), key=lambda x: -x[1])[:14]
            print(f"\n{name} 96/192 {B}x{T}: total {sum(kt.values()):.3f} ms (fwd+bwd, all kernels)")
            for k, v in top:
                print(f"  {v:8.3f} ms  {k}")


def sweep() -> None:
    """Per-kernel time for each launch setting (all kernels set alike per run), then the sequential V block."""
    xs, do = train_inputs(8, 4096, 96, 192)
    base = {k: dict(v) for k, v in chunk_mod.LAUNCH.items()}
    table: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    for nw, ns in ((2, 2), (4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)):
        for cfg in chunk_mod.LAUNCH.values():
            cfg.update(num_warps=nw, num_stages=ns)
        try:
            for k, v in kernel_times(ours, xs, do, reps=3).items():
                table[k][(nw, ns)] = v
        except Exception as e:
            print(f"({nw},{ns}) failed: {repr(e)[:200]}")
    for k, row in table.items():
        best = min(row, key=row.get)
        print(f"{k[:40]:40s} best {best}: {row[best]:.3f} ms | " + " ".join(f"{c}:{t:.3f}" for c, t in row.items()))
    chunk_mod.LAUNCH.update(base)
    for T in (4096, 65536):
        B = max(1, TOKENS // T)
        xs, do = train_inputs(B, T, 96, 192)
        for bv in (16, 32, 64):
            chunk_mod.SEQ_BV = bv
            kt = kernel_times(ours, xs, do, reps=3)
            print(f"{B}x{T} SEQ_BV={bv}: " + " ".join(f"{k[:20]}={v:.3f}" for k, v in kt.items() if "_h_" in k or
                                                       "_dh_" in k))
    chunk_mod.SEQ_BV = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--rows", choices=("all", "train", "decode"), default="all",
                    help="which rows of the table to run (the training rows take ~1.5 min each on a fresh machine)")
    ap.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/gdn.json")
    args = ap.parse_args()
    fla_chunk, fla_rec = load_fla()
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"copy bandwidth {bw:.2f} TB/s  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if args.sweep:
        sweep()
    if args.profile:
        profile(fla_chunk)
    if args.skip_table:
        return
    rows = []
    for K, V in ((96, 192), (128, 128)) if args.rows in ("all", "train") else ():
        for T in (4096, 16384, 65536):
            rows.append(train_row(K, V, T, fla_chunk))
            print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
    for K, V in ((96, 192), (128, 128)) if args.rows in ("all", "decode") else ():
        for B in (8, 64, 256):
            rows.append(decode_row(K, V, B, bw, fla_rec))
            print(json.dumps(rows[-1]), flush=True)
    print_tables(rows)
    if not args.no_record:
        path = append_records("gdn", to_records(rows, bw, run_info(torch.cuda.get_device_name())))
        print(f"records appended to {path}", flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gdn_bench.json"), "w") as f:
            json.dump({"time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "device": torch.cuda.get_device_name(), "copy_tbps": bw, "launch": chunk_mod.LAUNCH,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("bench/gdn.py needs a CUDA GPU")
    main()
