"""Supervised fine-tuning through TRL's SFTTrainer, loss on the answer tokens only."""

from __future__ import annotations

from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hyrl.config import SFTAlgo
from hyrl.eval.in_loop import eval_callbacks
from hyrl.model.loading import load_causal_lm
from hyrl.rl.data import sft_dataset
from hyrl.rl.finite import SkipNonFinite
from hyrl.rl.run import (
    CompleteCheckpoints,
    MetricsCallback,
    RunContext,
    finish,
    quiet_console,
    resume_point,
    trainer_args,
)
from hyrl.tracking import TRAIN_PANELS


def train_sft(ctx: RunContext, dataset: Dataset | None = None) -> None:
    """Train ``ctx.init_model_dir`` on the recipe's task (or on ``dataset``'s prompt/completion rows, e.g. a
    teacher's answers); the result lands in ``<run_dir>/final``."""
    recipe = ctx.recipe
    assert isinstance(recipe.algo, SFTAlgo)
    model = load_causal_lm(ctx.init_model_dir, recipe.model.implementation)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.init_model_dir))
    args = SFTConfig(**trainer_args(ctx), max_length=recipe.algo.max_length, completion_only_loss=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset if dataset is not None else sft_dataset(recipe.data),
        processing_class=tokenizer,
        callbacks=[MetricsCallback(ctx.metrics), CompleteCheckpoints(ctx), SkipNonFinite(ctx), *eval_callbacks(ctx)],
    )
    quiet_console(trainer, bar=recipe.logging.progress)
    trainer.train(resume_from_checkpoint=resume_point(ctx))
    finish(ctx, trainer, TRAIN_PANELS)
