"""Direct preference optimisation through TRL's DPOTrainer, on (correct, near-miss) answer pairs."""

from __future__ import annotations

from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from hyrl.config import DPOAlgo
from hyrl.eval.in_loop import eval_callbacks
from hyrl.model.loading import load_causal_lm
from hyrl.rl.data import dpo_dataset
from hyrl.rl.run import (
    CompleteCheckpoints,
    MetricsCallback,
    RunContext,
    finish,
    quiet_console,
    resume_point,
    trainer_args,
)


def train_dpo(ctx: RunContext) -> None:
    """Preference-train ``ctx.init_model_dir`` against a frozen copy of itself (the reference model)."""
    recipe = ctx.recipe
    algo = recipe.algo
    assert isinstance(algo, DPOAlgo)
    impl = recipe.model.implementation
    model = load_causal_lm(ctx.init_model_dir, impl)
    ref_model = load_causal_lm(ctx.init_model_dir, impl)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.init_model_dir))
    args = DPOConfig(**trainer_args(ctx), beta=algo.beta, loss_type=[algo.loss_type], max_length=algo.max_length)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dpo_dataset(recipe.data, seed=recipe.seed),
        processing_class=tokenizer,
        callbacks=[MetricsCallback(ctx.metrics), CompleteCheckpoints(), *eval_callbacks(ctx)],
    )
    quiet_console(trainer, bar=recipe.logging.progress)
    trainer.train(resume_from_checkpoint=resume_point(ctx))
    finish(ctx, trainer, ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "learning_rate", "accuracy"))
