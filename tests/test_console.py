"""What a person sees on the console: the driver's bar follows metrics.jsonl (torn lines and all) and stops with
the run; HF trainers print no per-step dicts; third-party notices a user cannot act on are filtered."""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path

import pytest

from hyrl.console import RAY_SETUP_HOOK, quiet_third_party
from hyrl.rl.progress import MetricsTail, RunSummary, watch_metrics


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hyrl-progress"]


def test_tail_keeps_a_torn_line_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []  # not written yet
    path.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew')
    assert [r["step"] for r in tail.read()] == [1]
    with path.open("a") as f:
        f.write('ard": 1.0}\nnot json\n{"no_step": 1}\n')
    assert tail.read() == [{"step": 2, "reward": 1.0}]


def test_summary_shows_reward_accuracy_kl_and_step_time() -> None:
    summary = RunSummary()
    for record in [{"step": 0, "eval/arithmetic/accuracy": 0.25}, {"step": 1, "reward": 0.2, "mismatch/kl": 3e-4},
                   {"step": 2, "reward": 0.4, "time/step_seconds": 1.5}, {"step": 2, "eval/parity/accuracy": 0.5}]:
        summary.add(record)
    assert summary.step == 2
    assert summary.postfix() == "reward 0.400 (mean 0.300) | acc 0.500 | kl 3.0e-04 | 1.5 s/step"


def test_watch_follows_the_file_and_stops_with_the_run(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with watch_metrics(path, total=3, interval_s=0.01) as summary:
        assert len(_progress_threads()) == 1
        path.write_text("".join(json.dumps({"step": s, "reward": s / 3}) + "\n" for s in (1, 2, 3)))
    assert summary.step == 3 and summary.rewards == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert not _progress_threads()


def test_watch_stops_when_training_raises_and_is_off_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="learner died"), watch_metrics(tmp_path / "m.jsonl", total=3,
                                                                           interval_s=0.01):
        raise RuntimeError("learner died")
    assert not _progress_threads()
    with watch_metrics(tmp_path / "m.jsonl", total=3, enabled=False) as summary:
        assert summary is None and not _progress_threads()


def test_trainers_print_no_per_step_dicts(tmp_path: Path) -> None:
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from hyrl.rl.run import quiet_console

    def kinds(trainer: Trainer) -> set[type]:
        return {type(cb) for cb in trainer.callback_handler.callbacks}

    for disable_tqdm in (True, False):  # HF adds PrinterCallback without the bar, ProgressCallback with it
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], disable_tqdm=disable_tqdm, use_cpu=True)
        trainer = quiet_console(Trainer(model=torch.nn.Linear(2, 2), args=args), bar=not disable_tqdm)
        assert PrinterCallback not in kinds(trainer) and ProgressCallback not in kinds(trainer)
        assert any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks) == (not disable_tqdm)


def test_known_third_party_notices_are_filtered(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)  # restored after the test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have 0.32.0", UserWarning,
                      stacklevel=1)
        warnings.warn("a warning hyrl does not know", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning hyrl does not know"]
    assert os.environ["TRL_EXPERIMENTAL_SILENCE"] == "1"  # TRL's own switch for its rollout_func notice
    with caplog.at_level(logging.WARNING):
        logging.getLogger("vllm.triton_utils.importing").warning("Triton is installed, but doesn't include CPU "
                                                                 "backend. Disabling Triton.")
    assert not caplog.records
    module, _, name = RAY_SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is quiet_third_party  # Ray imports it by this name
