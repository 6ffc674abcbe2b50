"""GRPO step time end to end (rollout, learner, weight sync) for a recipe under several worker layouts.

    python bench/grpo_step.py                                          # CPU: grpo_tiny, 1 vs 2 learner workers
    python bench/grpo_step.py --recipe recipes/grpo_2xh200.yaml --steps 8 \\
        --case "1 learner + 1 rollout GPU=" --case "dense baseline=model.architecture=dense"

Each case is ``label=override override ...`` on top of the recipe (and ``--set`` overrides shared by all cases);
the first case is the baseline the others are compared with. Every case is a real ``hyrl train`` run (a fresh
run folder, no warm start, no in-loop evaluation, no checkpoints) and the table reads its ``metrics.jsonl``:
median over steps 2..N (step 1 includes compilation and warm-up) of the step wall time and of its parts as logged
by the run: ``rollout/wait_seconds`` (sampling the step's prompts, the weight push included) and ``sync/seconds``
(the push alone); learner = step - rollout wait.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_case(recipe: Path, overrides: list[str], steps: int, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "hyrl.cli", "train", str(recipe), f"logging.run_dir={out}", "logging.progress=false",
           "logging.every_n_steps=1", f"optim.max_steps={steps}", "algo.warm_start=null", "eval.every_n_steps=0",
           "checkpoint.every_n_steps=0", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summarize(records: list[dict]) -> dict[str, float]:
    def median(key: str) -> float:
        values = [r[key] for r in records if key in r and r.get("step", 0) >= 2]
        return statistics.median(values) if values else float("nan")

    step, wait, sync = median("time/step_seconds"), median("rollout/wait_seconds"), median("sync/seconds")
    tokens = median("rollout/tokens_per_s")
    return {"step": step, "rollout": wait, "sync": sync, "learner": step - wait, "rollout_tok_s": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "grpo_tiny.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--set", action="append", default=[], help="override for all cases, e.g. rollout.enforce_eager=true")
    p.add_argument("--case", action="append", default=[], help="label=override override ... (first: baseline)")
    args = p.parse_args()
    cases = args.case or ["1 learner=learner.num_workers=1 rollout.num_workers=2",
                          "2 learners=learner.num_workers=2 rollout.num_workers=2"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hyrl_bench_") as tmp:
        for i, case in enumerate(cases):
            label, _, extra = case.partition("=")
            records = run_case(args.recipe, [*args.set, *extra.split()], args.steps, Path(tmp) / f"case{i}")
            rows.append((label, summarize(records)))
    base = rows[0][1]["step"]
    print(f"# {args.recipe.name}, {args.steps} steps, medians over steps 2..{args.steps}, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("| case | step s | rollout s | sync s | learner s | rollout tok/s | step vs first |")
    print("|---|---|---|---|---|---|---|")
    for label, s in rows:
        print(f"| {label} | {s['step']:.3f} | {s['rollout']:.3f} | {s['sync']:.3f} | {s['learner']:.3f} | "
              f"{s['rollout_tok_s']:.0f} | {base / s['step']:.2f}x |")


if __name__ == "__main__":
    main()
