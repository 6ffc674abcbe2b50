"""SFT/DPO non-finite guard: a step with NaN gradients is skipped (weights untouched, reported on the console and
as ``guard/skipped_step``), and ``optim.max_nonfinite_steps`` of them in a row stop the run naming a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trl import SFTTrainer

from hyrl.config import load_recipe
from hyrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _poison(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make the loss NaN during the given (1-based) optimizer steps."""
    clean = SFTTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        out = clean(self, model, inputs, *args, **kwargs)
        if self.state.global_step + 1 not in steps:
            return out
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    monkeypatch.setattr(SFTTrainer, "compute_loss", compute_loss)


def _run(tmp_path: Path, *overrides: str):
    from hyrl.rl.run import prepare_run
    from hyrl.rl.sft import train_sft

    recipe = load_recipe(ROOT / "recipes/sft_tiny.yaml", [
        f"logging.run_dir={tmp_path / 'run'}", "logging.progress=false", "logging.tensorboard=false",
        "logging.every_n_steps=1", "optim.max_steps=5", "data.num_train=64", "data.num_eval=4", *overrides])
    ctx = prepare_run(recipe)
    train_sft(ctx)
    return ctx


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    _poison(monkeypatch, {3})
    ctx = _run(tmp_path, "checkpoint.every_n_steps=1", "checkpoint.keep_last=5")
    assert "hyrl: step 3: non-finite gradient norm (nan); optimizer step skipped" in capsys.readouterr().out
    records = read_metrics(ctx.metrics.path)
    assert [r["guard/skipped_step"] for r in records if "guard/skipped_step" in r] == [3.0]
    assert max(r["step"] for r in records) == 5  # the run went on
    from safetensors.torch import load_file

    before, after = (load_file(ctx.checkpoint_dir / f"checkpoint-{n}" / "model.safetensors") for n in (2, 3))
    assert all(torch.equal(before[k], after[k]) for k in before), "the skipped step changed the weights"
    third = load_file(ctx.checkpoint_dir / "checkpoint-4" / "model.safetensors")
    assert not all(torch.equal(after[k], third[k]) for k in after), "training resumed after the skipped step"
    from hyrl.model.loading import load_causal_lm

    model = load_causal_lm(ctx.final_dir, ctx.recipe.model.implementation)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_nonfinite_steps_in_a_row_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyrl.rl.finite import NonFiniteError

    _poison(monkeypatch, {3, 4, 5})
    with pytest.raises(NonFiniteError, match=r"steps 3-4: 2 non-finite .* the last good checkpoint is .*checkpoint-"):
        _run(tmp_path, "checkpoint.every_n_steps=2", "optim.max_nonfinite_steps=2")
