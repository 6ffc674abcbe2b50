"""The driver's view of a run whose learners train in Ray actors: a thread tails ``<run_dir>/metrics.jsonl`` and
drives a tqdm bar (step i/N, reward, held-out accuracy, mismatch KL, step time, tqdm's ETA).

The learners' own console output goes to Ray's worker logs; the metrics file is what they share with the driver,
flushed per line by ``hyrl.tracking.MetricsLog``. A line still being written is kept until its newline arrives; a
line that does not parse is skipped: the bar never stops the run.

    with watch_metrics(run_dir / "metrics.jsonl", total=max_steps, enabled=recipe.logging.progress):
        learners.train()
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tqdm.auto import tqdm


class MetricsTail:
    """New complete records of a JSONL file since the last ``read`` (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = Path(path), 0, b""

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # a torn or foreign line: skip it, never raise into the run
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int | float):
                records.append(record)
        return records


class RunSummary:
    """What the bar shows, folded from the records seen so far."""

    def __init__(self) -> None:
        self.step, self.rewards, self.accuracy, self.latest = 0, [], None, {}

    def add(self, record: dict) -> None:
        self.step = max(self.step, int(record["step"]))
        values = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
        if "reward" in values:
            self.rewards.append(values["reward"])
        evals = [k for k in values if k.startswith("eval/") and k.endswith("/accuracy")]
        if evals:  # the held-out evaluation (start, every N steps, end)
            self.accuracy = values[evals[0]]
        self.latest.update({k: values[k] for k in ("mismatch/kl", "time/step_seconds") if k in values})

    def postfix(self) -> str:
        """e.g. ``reward 0.410 (mean 0.300) | acc 0.520 | kl 3.1e-04 | 1.2 s/step``."""
        parts = []
        if self.rewards:
            parts.append(f"reward {self.rewards[-1]:.3f} (mean {sum(self.rewards) / len(self.rewards):.3f})")
        if self.accuracy is not None:
            parts.append(f"acc {self.accuracy:.3f}")
        if "mismatch/kl" in self.latest:
            parts.append(f"kl {self.latest['mismatch/kl']:.1e}")
        if "time/step_seconds" in self.latest:
            parts.append(f"{self.latest['time/step_seconds']:.1f} s/step")
        return " | ".join(parts)


def _poll(tail: MetricsTail, summary: RunSummary, bar: tqdm) -> None:
    records = tail.read()
    for record in records:
        summary.add(record)
    if records:
        bar.set_postfix_str(summary.postfix(), refresh=False)
        if not bar.update(max(0, min(summary.step, bar.total) - bar.n)):  # True when it redrew the bar
            bar.refresh()


@contextmanager
def watch_metrics(path: Path, total: int, *, enabled: bool = True, desc: str = "train",
                  interval_s: float = 1.0) -> Iterator[RunSummary | None]:
    """Tail ``path`` on a daemon thread while the body runs and show it as a bar; stops (one last read, bar
    closed) when the body returns or raises. ``enabled=False``: no thread, no bar."""
    if not enabled:
        yield None
        return
    tail, summary, stop = MetricsTail(path), RunSummary(), threading.Event()
    for record in tail.read():  # a resumed run's earlier steps: the bar starts there, and its ETA counts from there
        summary.add(record)
    bar = tqdm(total=total, initial=min(summary.step, total), desc=desc, unit="step", dynamic_ncols=True)

    def poll() -> None:
        with suppress(Exception):  # the bar is a view: a failure here must neither end nor mask the run's outcome
            _poll(tail, summary, bar)

    def loop() -> None:
        while not stop.wait(interval_s):
            poll()

    thread = threading.Thread(target=loop, name="hyrl-progress", daemon=True)
    thread.start()
    try:
        yield summary
    finally:
        stop.set()
        thread.join(timeout=5)
        poll()
        bar.close()
