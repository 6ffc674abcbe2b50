"""The run folder's record of a run: metrics to JSONL (flushed per line, so a crash loses nothing), TensorBoard
events, and PNG plots of the curves.

Layout of ``<run_dir>``: ``recipe.yaml`` (resolved), ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``final/``,
``*.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path


class MetricsLog:
    """Append-only metrics: one JSON object per step in ``metrics.jsonl``, mirrored to TensorBoard.

    After ``resume(step)`` the file holds each (step, key) at most once, as if the run had never stopped.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)
        self._resumed_at = -1
        self._seen: dict[int, set[str]] = {}  # steps <= _resumed_at: the keys the file already has there
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def resume(self, step: int) -> None:
        """The run continues from its checkpoint at ``step``: records past it are dropped (the resumed run logs
        those steps again), and so are keys logged twice at a step up to it, in the file now (e.g. a stage that
        re-ran before training resumed) or later (e.g. the checkpoint's own evaluation, logged again)."""
        self._file.close()
        self._resumed_at, self._seen = step, {}
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        kept = [r for r in (self._unseen(r["step"], r) for r in kept) if len(r) > 2]  # more than step and time
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)  # a crash here leaves the old file or the new one, never half of one
        self._file = self.path.open("a", buffering=1)

    def _unseen(self, step: int, record: dict) -> dict:
        """``record`` less the keys already logged at ``step`` (only steps up to the resume point are tracked)."""
        if step > self._resumed_at:
            return record
        seen = self._seen.setdefault(step, set())
        out = {k: v for k, v in record.items() if k in ("step", "time") or k not in seen}
        seen.update(out)
        return out

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        clean = self._unseen(step, clean)
        if not clean:
            return
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    """Every record of a ``metrics.jsonl``; a torn last line (crash mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# --- curves.png --------------------------------------------------------------------------------------------------
# A panel is a name: "accuracy" (every eval/.../accuracy key: held-out greedy from step 0, in-loop per task),
# "step_time" (time/step_seconds split into rollout wait / weight sync / learner), "mismatch/kl" (log scale), or
# any other metric key (a line; raw + moving average for SMOOTHED). Panels with no data are left out.

GRPO_PANELS = ("reward", "accuracy", "mismatch/kl", "step_time")
TRAIN_PANELS = ("loss", "grad_norm", "learning_rate", "accuracy")
SMOOTHED = ("reward", "loss", "grad_norm")
Series = dict[str, tuple[list[float], list[float]]]  # label -> (steps, values)


def moving_average(values: list[float], half_width: int) -> list[float]:
    """Centred moving average over ``2 * half_width + 1`` points, the window cut short at either end. Centred, so
    the smoothed curve does not lag the raw one (an EMA would)."""
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half_width) : i + half_width + 1]
        out.append(sum(window) / len(window))
    return out


def _series(records: list[dict], key: str, *, positive: bool = False) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and (r[key] > 0 or not positive)]
    return [p[0] for p in points], [p[1] for p in points]


def _step_time(records: list[dict]) -> Series:
    """Per logged step: rollout wait, weight sync and the learner's share (the rest) of the step's wall time."""
    timed = [r for r in records if "time/step_seconds" in r]
    steps = [r["step"] for r in timed]
    rollout = [r.get("rollout/wait_seconds", 0.0) for r in timed]
    sync = [r.get("sync/seconds", 0.0) for r in timed]
    learner = [max(0.0, r["time/step_seconds"] - a - b) for r, a, b in zip(timed, rollout, sync)]
    parts = {"rollout wait": rollout, "weight sync": sync, "learner": learner}
    return {label: (steps, values) for label, values in parts.items() if any(values)}


def panel_series(records: list[dict], panel: str) -> Series:
    """What a panel draws; empty when the run logged none of it (the panel is then left out)."""
    if panel == "step_time":
        return _step_time(records)
    if panel == "accuracy":
        keys = sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith("accuracy")})
        return {k[5:].removesuffix("/accuracy"): _series(records, k) for k in keys}
    steps, values = _series(records, panel, positive=panel == "mismatch/kl")
    if not values:
        return {}
    if panel in SMOOTHED and len(values) >= 8:  # fewer points: a mean over them would only blur them
        half = max(1, len(values) // 25)
        return {"raw": (steps, values), f"mean of {2 * half + 1}": (steps, moving_average(values, half))}
    return {panel: (steps, values)}


TITLES = {"step_time": "step time", "accuracy": "eval accuracy", "mismatch/kl": "learner-vs-rollout KL (log)"}


def _draw(ax, panel: str, series: Series) -> None:
    from matplotlib.ticker import MaxNLocator

    if panel == "step_time":
        steps, parts = next(iter(series.values()))[0], [v for _, v in series.values()]
        ax.stackplot(steps, *parts, labels=list(series), alpha=0.8)
        ax.set_ylim(0, 1.3 * max(map(sum, zip(*parts))))  # headroom for the legend above the stack
        ax.set_ylabel("seconds")
    else:
        for label, (steps, values) in series.items():
            raw = panel in SMOOTHED and label == "raw"
            ax.plot(steps, values, label=label, linewidth=0.8 if raw else 1.6, alpha=0.35 if raw else 1.0,
                    marker="o" if panel == "accuracy" or len(values) <= 12 else None, markersize=3)
    if panel == "mismatch/kl":
        ax.set_yscale("log")
    if panel == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="upper center" if panel == "step_time" else "best",
                  ncols=len(series) if panel == "step_time" else 1)
    ax.set_title(TITLES.get(panel, panel))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def curves_figure(records: list[dict], panels: Iterable[str], title: str = ""):
    """A matplotlib figure: a grid of the ``panels`` that have data (see above); None when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {p: s for p in panels if (s := panel_series(records, p))}
    if not drawn:
        return None
    cols = len(drawn) if len(drawn) <= 3 else 2 if len(drawn) == 4 else 3
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    cells = list(axes.flat)
    for ax, (panel, series) in zip(cells, drawn.items()):
        _draw(ax, panel, series)
    for ax in cells[len(drawn):]:
        fig.delaxes(ax)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout()
    return fig


def plot_metrics(records: list[dict], panels: Iterable[str], out: Path, title: str = "") -> Path | None:
    """Write ``curves_figure`` to ``out``; returns the PNG path, or None when nothing was logged."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records, panels, title)
    if fig is None:
        return None
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
