"""Checkpoint integrity: damaged or unfinished checkpoints are skipped with the reason, resume falls back to the
newest intact one, and rotation never leaves a run without a complete checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyrl.rl.checkpoints import MANIFEST, checkpoint_problem, newest_intact, rotate, write_manifest
from hyrl.tracking import read_metrics


def _checkpoint(root: Path, step: int, *, complete: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "sub" / "optimizer.pt").write_bytes(os.urandom(1000))
    if complete:
        write_manifest(folder, step)
    return folder


def _flip(path: Path, at: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def test_every_kind_of_damage_is_named(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 10)
    assert checkpoint_problem(folder) is None
    _flip(folder / "model.safetensors", 2000)
    assert "model.safetensors does not match its checksum" in checkpoint_problem(folder)
    folder = _checkpoint(tmp_path, 20)
    with open(folder / "sub" / "optimizer.pt", "r+b") as f:
        f.truncate(500)
    assert "sub/optimizer.pt has 500 bytes, the manifest says 1000" in checkpoint_problem(folder)
    folder = _checkpoint(tmp_path, 30)
    (folder / "model.safetensors").unlink()
    assert checkpoint_problem(folder) == "model.safetensors is missing"
    assert "interrupted" in checkpoint_problem(_checkpoint(tmp_path, 40, complete=False))


def test_newest_intact_skips_newer_damaged_checkpoints_and_says_why(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 5)
    _checkpoint(tmp_path, 10)
    _flip(_checkpoint(tmp_path, 20) / "model.safetensors", 100)
    _checkpoint(tmp_path, 30, complete=False)
    said: list[str] = []
    assert newest_intact(tmp_path, said.append) == tmp_path / "checkpoint-10"
    assert len(said) == 2 and "checkpoint-30: no manifest" in said[0] and "checkpoint-20: model.safetensors" in said[1]


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 15, complete=False)  # an interrupted save, older than the newest complete one
    _checkpoint(tmp_path, 40, complete=False)  # the save in progress right now
    removed = rotate(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-30", "checkpoint-40"]
    assert (tmp_path / "checkpoint-30" / MANIFEST).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path: Path, train, damage: str) -> None:
    """The issue's fault injection: 64 bytes flipped inside the newest checkpoint's weights (header intact), or the
    file truncated. Resume names the damaged checkpoint, continues from the older one, and ends with finite
    weights and no lost or repeated step."""
    import torch
    from safetensors.torch import load_file

    run_dir = tmp_path / damage
    common = ["checkpoint.every_n_steps=10", "checkpoint.keep_last=2", "data.num_train=256", "logging.every_n_steps=1",
              "eval.every_n_steps=0"]
    train("sft_tiny.yaml", run_dir, *common, "optim.max_steps=20")
    weights = run_dir / "checkpoints" / "checkpoint-20" / "model.safetensors"
    if damage == "flipped":
        _flip(weights, weights.stat().st_size // 2)
    else:
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    out = train("sft_tiny.yaml", run_dir, *common, "optim.max_steps=30", "checkpoint.resume=true").stdout
    reason = "does not match its checksum" if damage == "flipped" else "truncated"
    assert f"skipping {weights.parent}: model.safetensors" in out and reason in out, out[-2000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-10'}" in out
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 31)), steps
    final = load_file(run_dir / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())


@pytest.mark.slow
def test_a_kill_during_a_save_loses_only_the_unfinished_checkpoint(tmp_path: Path, train) -> None:
    """SIGKILL after the trainer wrote checkpoint-20 but before its manifest (``HYRL_FAULT``): resume names the
    unfinished folder, continues from checkpoint-10, and every step is logged once."""
    import subprocess
    import sys

    run_dir = tmp_path / "killed"
    common = ["checkpoint.every_n_steps=10", "checkpoint.keep_last=1", "data.num_train=256", "logging.every_n_steps=1",
              "eval.every_n_steps=0", "optim.max_steps=30", f"logging.run_dir={run_dir}", "logging.progress=false"]
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "sft_tiny.yaml")
    killed = subprocess.run([sys.executable, "-m", "hyrl.cli", "train", recipe, *common], capture_output=True,
                            text=True, env={**os.environ, "HYRL_FAULT": "checkpoint-before-manifest:20"}, timeout=600)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "checkpoint-10" / MANIFEST).is_file(), "keep_last=1 must not have deleted the only one"
    assert not (checkpoints / "checkpoint-20" / MANIFEST).exists()
    out = train("sft_tiny.yaml", run_dir, *common[:-2], "checkpoint.resume=true").stdout
    assert f"skipping {checkpoints / 'checkpoint-20'}: no manifest (the save was interrupted)" in out, out[-2000:]
    assert f"resuming from {checkpoints / 'checkpoint-10'}" in out
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 31)), steps
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-30"]
