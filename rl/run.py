"""What every training run shares: the run folder, the initial model, TRL/HF trainer arguments and metrics."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from hyrl.config import Recipe, dump_recipe
from hyrl.faults import fault_point
from hyrl.rl.checkpoints import newest_intact, rotate, write_manifest
from hyrl.tracking import MetricsLog

if TYPE_CHECKING:
    from transformers import Trainer


@dataclass
class RunContext:
    """Values computed at launch (the recipe stays input, not state)."""

    recipe: Recipe
    run_dir: Path
    init_model_dir: Path
    _metrics: MetricsLog | None = None

    @property
    def metrics(self) -> MetricsLog:
        """The run's metrics log, opened on first use (in whichever process trains)."""
        if self._metrics is None:
            self._metrics = MetricsLog(self.run_dir, tensorboard=self.recipe.logging.tensorboard)
        return self._metrics

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"


def set_threads(n: int = 1) -> None:
    """One intra-op thread per process: with two, a tiny TRL step went from 0.1 s to 2-6 s under contention."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(n)


def _set_aside(run_dir: Path) -> None:
    """A fresh run never deletes an earlier one: it is renamed to ``<run_dir>.<timestamp>``."""
    if run_dir.exists() and any(run_dir.iterdir()):
        aside = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run_dir), str(aside))
        print(f"hyrl: moved the earlier run in {run_dir} to {aside}")


def prepare_run(recipe: Recipe) -> RunContext:
    """Create the run folder, record the resolved recipe, and make the initial model folder."""
    from hyrl.model.presets import build_tiny_dense_model, build_tiny_model

    set_threads()
    run_dir = recipe.run_dir.resolve()  # absolute: Ray actors do not share the driver's working directory
    if not recipe.checkpoint.resume:
        _set_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, run_dir / "recipe.yaml")
    init_dir = recipe.model.path.resolve() if recipe.model.path is not None else None
    if init_dir is None:
        init_dir = run_dir / "init"
        if not (init_dir / "config.json").is_file():
            if recipe.model.architecture == "dense":
                build_tiny_dense_model(init_dir, preset=recipe.model.preset, seed=recipe.seed)
            else:
                build_tiny_model(init_dir, preset=recipe.model.preset, seed=recipe.seed,
                                 implementation=recipe.model.implementation)
    return RunContext(recipe, run_dir, Path(init_dir))


class MetricsCallback(TrainerCallback):
    """Forwards the HF trainer's logs to the run's metrics log (JSONL + TensorBoard); a run resumed from checkpoint
    N drops what the crashed run logged after N (``MetricsLog.resume``), so no step is recorded twice."""

    def __init__(self, metrics: MetricsLog):
        self.metrics = metrics

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step and state.is_world_process_zero:  # the trainer state is the checkpoint's by now
            self.metrics.resume(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.metrics.log(state.global_step, logs)


class _BarOnly(ProgressCallback):
    """transformers' step bar without the dict of metrics it writes through the bar at every log (they go to
    ``metrics.jsonl`` and TensorBoard); the latest loss shows at the bar's end instead."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")


def quiet_console(trainer: Trainer, *, bar: bool) -> Trainer:
    """Swap the HF trainer's console loggers (``ProgressCallback`` writes each step's logs through its bar,
    ``PrinterCallback`` prints them when the bar is off) for a bare step bar, or nothing (``bar=False``)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if bar:
        trainer.add_callback(_BarOnly)
    return trainer


def trainer_args(ctx: RunContext) -> dict:
    """Arguments shared by TRL's SFTConfig / DPOConfig / GRPOConfig, taken from the recipe."""
    r, o = ctx.recipe, ctx.recipe.optim
    every = r.checkpoint.every_n_steps
    return dict(
        output_dir=str(ctx.checkpoint_dir),
        max_steps=o.max_steps,
        per_device_train_batch_size=o.batch_size,
        gradient_accumulation_steps=o.grad_accum,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        max_grad_norm=o.max_grad_norm,
        lr_scheduler_type="cosine" if o.lr_schedule == "cosine" else "constant_with_warmup",
        logging_steps=r.logging.every_n_steps,
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        save_total_limit=None,  # CompleteCheckpoints rotates, after the new checkpoint is complete
        report_to=[],
        seed=r.seed,
        data_seed=r.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=r.model.dtype == "bfloat16",
        dataloader_num_workers=0,
        disable_tqdm=not r.logging.progress,
    )


class CompleteCheckpoints(TrainerCallback):
    """Writes each checkpoint's manifest (per-file sizes and checksums) once everything in it is saved, then
    rotates to ``checkpoint.keep_last``. The trainer's own rotation is off (``save_total_limit=None``): it deleted
    the old checkpoint before the new one was complete, so a kill in between lost both."""

    def __init__(self, ctx: RunContext):
        self.keep_last = ctx.recipe.checkpoint.keep_last

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            fault_point("checkpoint-before-manifest", state.global_step)
            write_manifest(folder, state.global_step)
            rotate(Path(args.output_dir), self.keep_last)


def latest_checkpoint(ctx: RunContext) -> Path | None:
    """The newest checkpoint of the run whose files match its manifest (newer damaged ones are reported)."""
    return newest_intact(ctx.checkpoint_dir)


def resume_point(ctx: RunContext) -> str | None:
    """The newest intact checkpoint, when the recipe asks to resume and one exists."""
    if not ctx.recipe.checkpoint.resume:
        return None
    last = latest_checkpoint(ctx)
    if last is None:
        print(f"hyrl: checkpoint.resume=true but no intact checkpoint in {ctx.checkpoint_dir}; starting fresh")
        return None
    print(f"hyrl: resuming from {last}")
    return str(last)


def finish(ctx: RunContext, trainer, panels: Sequence[str], state_dict: dict | None = None) -> None:
    """Save the final model (``state_dict``: its gathered weights, when sharded) + tokenizer, close the metrics and
    draw ``curves.png`` (``panels``: see ``hyrl.tracking.plot_metrics``)."""
    from hyrl.model.loading import save_causal_lm
    from hyrl.tracking import plot_metrics, read_metrics

    save_causal_lm(trainer.model, ctx.final_dir, state_dict)
    trainer.processing_class.save_pretrained(str(ctx.final_dir))
    ctx.metrics.close()
    plot_metrics(read_metrics(ctx.metrics.path), panels, ctx.run_dir / "curves.png", title=ctx.recipe.name)
