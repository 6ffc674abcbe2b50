"""The run's pictures: curves.png panels come only from logged metrics (no empty panel), smoothing is a centred
moving average, and the evaluation plots carry standard errors and appear only when they have something to show."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hyrl.eval.report import _stderr, plots
from hyrl.tracking import GRPO_PANELS, TRAIN_PANELS, curves_figure, moving_average, panel_series, plot_metrics


def grpo_records(steps: int = 12) -> list[dict]:
    records: list[dict] = [{"step": 0, "eval/arithmetic/accuracy": 0.1, "eval/parity/accuracy": 0.5}]
    for s in range(1, steps + 1):
        records.append({"step": s, "reward": s / steps, "mismatch/kl": 1e-4 / s, "time/step_seconds": 2.0,
                        "rollout/wait_seconds": 0.5, **({"sync/seconds": 0.25} if s > 1 else {})})
    records += [{"step": steps, "eval/arithmetic/accuracy": 0.4}]
    return records


def _titles(records: list[dict], panels) -> list[str]:
    import matplotlib.pyplot as plt

    fig = curves_figure(records, panels, title="t")
    titles = [a.get_title() for a in fig.axes]
    plt.close(fig)
    return titles


def test_moving_average_by_hand() -> None:
    # window 3, cut short at the ends: (0+3)/2, (0+3+6)/3, (3+6+3)/3, (6+3)/2
    assert moving_average([0.0, 3.0, 6.0, 3.0], 1) == [1.5, 3.0, 4.0, 4.5]
    assert moving_average([2.0, 4.0], 0) == [2.0, 4.0]


def test_grpo_curves_have_the_four_panels(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    assert plot_metrics(grpo_records(), GRPO_PANELS, tmp_path / "curves.png", title="grpo_tiny")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    fig = curves_figure(grpo_records(), GRPO_PANELS, title="grpo_tiny")
    assert [a.get_title() for a in fig.axes] == ["reward", "eval accuracy", "learner-vs-rollout KL (log)",
                                                 "step time"]
    assert fig.axes[2].get_yscale() == "log"
    assert all(a.lines or a.collections for a in fig.axes), "every panel draws something"
    assert fig.get_suptitle() == "grpo_tiny"
    plt.close(fig)


def test_missing_keys_leave_no_empty_panel(tmp_path: Path) -> None:
    records = [{"step": s, "reward": 0.5, "mismatch/kl": 0.0} for s in range(1, 5)]  # KL <= 0 cannot go on a log axis
    assert _titles(records, GRPO_PANELS) == ["reward"]
    sft = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in range(1, 5)]
    assert _titles(sft, TRAIN_PANELS) == ["loss", "learning_rate"]
    assert plot_metrics([{"step": 1, "epoch": 0.1}], TRAIN_PANELS, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_accuracy_panel_starts_at_step_zero_and_step_time_splits() -> None:
    acc = panel_series(grpo_records(), "accuracy")
    assert acc["arithmetic"] == ([0, 12], [0.1, 0.4]) and acc["parity"] == ([0], [0.5])
    parts = panel_series(grpo_records(3), "step_time")
    assert parts["rollout wait"][1] == [0.5, 0.5, 0.5]
    assert parts["weight sync"][1] == [0.0, 0.25, 0.25]  # no sync before the first step
    assert parts["learner"][1] == [1.5, 1.25, 1.25]  # the rest of time/step_seconds


def _entry(name: str, accuracy: float, needles: dict[int, float], memory: bool) -> dict:
    tasks = {"arithmetic": {"accuracy": accuracy, "num_prompts": 64, "samples_per_prompt": 4}}
    for words, acc in needles.items():
        tasks[f"needle/{words}"] = {"accuracy": acc, "prompt_tokens": 2 * words, "num_prompts": 8,
                                    "samples_per_prompt": 1}
    entry = {"name": name, "tasks": tasks}
    if memory:
        entry["memory"] = [{"context": 128, "cache_mib": 0.2}, {"context": 512, "cache_mib": 0.3}]
    return entry


def test_eval_plots_only_when_informative(tmp_path: Path) -> None:
    one_length = {"checkpoints": [_entry("a", 0.5, {32: 1.0}, memory=False), _entry("b", 0.7, {32: 0.5}, False)]}
    assert [p.name for p in plots(one_length, tmp_path)] == ["accuracy.png"]  # the needle shows as a bar
    many = {"checkpoints": [_entry("a", 0.5, {32: 1.0, 64: 0.5}, memory=True), _entry("b", 0.7, {}, False)]}
    out = tmp_path / "many"
    out.mkdir()
    assert [p.name for p in plots(many, out)] == ["accuracy.png", "recall.png", "memory.png"]


def test_binomial_standard_error() -> None:
    assert _stderr({"accuracy": 0.5, "num_prompts": 25, "samples_per_prompt": 4}) == pytest.approx(0.05)
    assert math.isnan(_stderr({"accuracy": 0.5}))  # n unknown: no error bar
    assert math.isnan(_stderr({"accuracy": 1.0, "num_prompts": 10, "samples_per_prompt": 1}))


def test_resume_keeps_each_step_and_key_once(tmp_path: Path) -> None:
    """A run checkpointed at step 4 and crashed at step 6 (mid-write), then resumed from 4: steps 5-6 are logged
    again, the checkpoint's evaluation at 4 is logged again, and a stage before training logged step 0 again."""
    from hyrl.tracking import MetricsLog, read_metrics

    log = MetricsLog(tmp_path, tensorboard=False)
    log.log(0, {"stage/accuracy": 0.5})
    for step in range(1, 7):
        log.log(step, {"loss": 1.0 / step})
    log.log(4, {"eval/a/accuracy": 0.2})
    log.close()
    with log.path.open("a") as f:
        f.write('{"step": 7, "lo')  # torn by the crash
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log(0, {"stage/accuracy": 0.6})  # written before training resumes
    log.resume(4)
    log.log(4, {"eval/a/accuracy": 0.3, "eval/a/tokens": 9.0})  # only the new key is kept
    for step in range(5, 9):
        log.log(step, {"loss": 2.0 / step})
    log.close()
    records = read_metrics(log.path)
    pairs = [(r["step"], k) for r in records for k in r if k not in ("step", "time")]
    assert len(pairs) == len(set(pairs)), pairs
    assert [r["loss"] for r in records if "loss" in r] == [1.0, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 2 / 6, 2 / 7, 2 / 8]
    assert [r["stage/accuracy"] for r in records if "stage/accuracy" in r] == [0.5]
    at_4 = [{k: v for k, v in r.items() if k not in ("step", "time")} for r in records if r["step"] == 4]
    assert at_4 == [{"loss": 0.25}, {"eval/a/accuracy": 0.2}, {"eval/a/tokens": 9.0}]
    assert log.path.read_text().count("\n") == len(records)  # the torn line is gone
