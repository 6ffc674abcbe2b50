"""``report.md`` (checkpoints side by side) and the plots of an evaluation folder."""

from __future__ import annotations

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


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """accuracy.png (per task), recall.png (needle accuracy vs context), memory.png (cache MiB vs context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries, written = results["checkpoints"], []
    if not entries:
        return written
    tasks = [t for t in entries[0]["tasks"] if not t.startswith("needle/")]
    if tasks:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(tasks) * len(entries)), 3.4))
        width = 0.8 / len(entries)
        for i, e in enumerate(entries):
            xs = [j + i * width for j in range(len(tasks))]
            ax.bar(xs, [e["tasks"][t]["accuracy"] for t in tasks], width, label=_label(e))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "accuracy.png"))
    if any(_needle_points(e) for e in entries):
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for e in entries:
            if pts := _needle_points(e):
                ax.plot(*zip(*pts), marker="o", label=_label(e))
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("needle recall")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "recall.png"))
    if any(e.get("memory") for e in entries):
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for e in entries:
            if e.get("memory"):
                ax.plot([r["context"] for r in e["memory"]], [r["cache_mib"] for r in e["memory"]], marker="o",
                        label=_label(e))
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("cache MiB per sequence")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "memory.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write report.md and the plots; returns the report path."""
    out = Path(out_dir) / "report.md"
    out.write_text(markdown(results))
    plots(results, Path(out_dir))
    return out
