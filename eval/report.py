"""``report.md`` (checkpoints side by side) and the plots of an evaluation folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _label(entry: dict[str, Any]) -> str:
    return entry["name"] + (" (baseline)" if entry.get("baseline") else "")


def _needle_points(entry: dict[str, Any]) -> list[tuple[float, float]]:
    """(measured prompt tokens, accuracy) of the needle task at each context length."""
    return sorted((m["prompt_tokens"], m["accuracy"]) for k, m in entry["tasks"].items() if k.startswith("needle/"))


def markdown(results: dict[str, Any]) -> str:
    """Task table (accuracy, pass@k, mean length), fidelity/cost table, memory table; one row per checkpoint."""
    entries = results["checkpoints"]
    s = results["settings"]
    k = s["samples"]
    tasks = list(entries[0]["tasks"]) if entries else []
    lines = [f"# Evaluation ({results['created']})", "",
             f"{s['num_examples']} held-out examples per task (seed {s['seed']}), {k} sample(s) per prompt at "
             f"temperature {s['temperature'] if s['temperature'] is not None else (0.0 if k == 1 else 1.0)}, "
             f"up to {s['max_new_tokens']} new tokens.", "", "## Tasks", "",
             "accuracy" + (f" / pass@{k}" if k > 1 else "") + " (mean completion tokens)", "",
             "| checkpoint | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for e in entries:
        cells = []
        for t in tasks:
            m = e["tasks"][t]
            cell = f"{m['accuracy']:.3f}" + (f" / {m[f'pass@{k}']:.3f}" if k > 1 else "")
            cell += f" ({m['mean_length']:.1f})" + (f" [{m['verifier_errors']} verifier errors]"
                                                    if m["verifier_errors"] else "")
            cells.append(cell)
        lines.append(f"| {_label(e)} | " + " | ".join(cells) + " |")
    lines += ["", "## Fidelity and cost", "",
              "| checkpoint | mismatch KL (mean) | max abs dlogp | rollout tok/s |", "|---|---|---|---|"]
    for e in entries:
        f, t = e.get("fidelity", {}), e.get("throughput", {})
        lines.append(f"| {_label(e)} | {f.get('kl_mean', float('nan')):.2e} | "
                     f"{f.get('max_abs_delta', float('nan')):.2e} | {t.get('tokens_per_s', float('nan')):.0f} |")
    mem = [e for e in entries if e.get("memory")]
    if mem:
        lengths = [r["context"] for r in mem[0]["memory"]]
        lines += ["", "## Cache memory per sequence (MiB) vs context length", "",
                  "| checkpoint | " + " | ".join(str(L) for L in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
        for e in mem:
            lines.append(f"| {_label(e)} | " + " | ".join(f"{r['cache_mib']:.3f}" for r in e["memory"]) + " |")
    return "\n".join(lines) + "\n"


def _stderr(m: dict[str, Any]) -> float:
    """Binomial standard error sqrt(p(1-p)/n) of an accuracy over n = prompts x samples; NaN (no error bar drawn)
    when n is unknown or the error is 0."""
    n = m.get("num_prompts", 0) * m.get("samples_per_prompt", 0)
    p = m["accuracy"]
    return math.sqrt(p * (1 - p) / n) if n > 1 and 0 < p < 1 else math.nan


def _accuracy_figure(entries: list[dict[str, Any]], tasks: list[str]):
    """Bars per task and checkpoint, each labelled with its value, with +-1 standard error."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(tasks) * len(entries) + 1.5), 3.8))
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        xs = [j - 0.4 + (i + 0.5) * width for j in range(len(tasks))]
        ps = [e["tasks"][t]["accuracy"] for t in tasks]
        errs = [_stderr(e["tasks"][t]) for t in tasks]
        ax.bar(xs, ps, width * 0.92, yerr=errs, capsize=3, label=_label(e), error_kw={"elinewidth": 0.8})
        for x, p, err in zip(xs, ps, errs):
            ax.text(x, p + (0 if math.isnan(err) else err) + 0.02, f"{p:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20 if max(map(len, tasks)) > 10 else 0)
    ax.set_ylabel("accuracy (± 1 s.e.)")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15 if len(tasks) > 1 else -0.1),
              ncols=min(3, len(entries)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _lines_figure(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, ylim=None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for label, points in series.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """accuracy.png (per task, with standard errors); recall.png (needle accuracy vs context) when the needle ran at
    more than one context length; memory.png (cache MiB vs context) when memory was measured."""
    import matplotlib

    matplotlib.use("Agg")

    entries, written = results["checkpoints"], []
    if not entries:
        return written
    needles = {_label(e): pts for e in entries if len(pts := _needle_points(e)) > 1}
    tasks = [t for t in entries[0]["tasks"] if not (needles and t.startswith("needle/"))]  # else: needle as bars
    if tasks:
        written.append(_save(_accuracy_figure(entries, tasks), out_dir / "accuracy.png"))
    if needles:
        fig = _lines_figure(needles, "prompt tokens", "needle recall", ylim=(-0.02, 1.02))
        written.append(_save(fig, out_dir / "recall.png"))
    memory = {_label(e): [(r["context"], r["cache_mib"]) for r in e["memory"]] for e in entries if e.get("memory")}
    if memory:
        written.append(_save(_lines_figure(memory, "context length (tokens)", "cache MiB per sequence"),
                             out_dir / "memory.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write report.md and the plots; returns the report path."""
    out = Path(out_dir) / "report.md"
    out.write_text(markdown(results))
    plots(results, Path(out_dir))
    return out
