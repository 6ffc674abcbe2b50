"""Direct preference optimisation through TRL's DPOTrainer, on on-policy pairs judged by the task verifier (or
synthetic near-miss pairs)."""

from __future__ import annotations

from datasets import Dataset
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from hyrl.config import DPOAlgo, Recipe
from hyrl.eval.in_loop import eval_callbacks
from hyrl.model.loading import load_causal_lm
from hyrl.rl.data import dpo_dataset, load_examples
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


def train_dpo(ctx: RunContext) -> None:
    """Preference-train ``ctx.init_model_dir`` against a frozen copy of itself (the reference model)."""
    recipe = ctx.recipe
    algo = recipe.algo
    assert isinstance(algo, DPOAlgo)
    impl = recipe.model.implementation
    model = load_causal_lm(ctx.init_model_dir, impl)
    ref_model = load_causal_lm(ctx.init_model_dir, impl)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.init_model_dir))
    losses: dict = {"loss_type": [algo.loss_type]}
    if algo.sft_weight > 0:  # TRL's "sft" loss: the NLL of the chosen answer, weighted beside the preference loss
        losses = {"loss_type": [algo.loss_type, "sft"], "loss_weights": [1.0, algo.sft_weight]}
    args = DPOConfig(**trainer_args(ctx), beta=algo.beta, max_length=algo.max_length, **losses)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=preference_data(ctx, model, tokenizer),
        processing_class=tokenizer,
        callbacks=[MetricsCallback(ctx.metrics), CompleteCheckpoints(ctx), SkipNonFinite(ctx), *eval_callbacks(ctx)],
    )
    quiet_console(trainer, bar=recipe.logging.progress)
    trainer.train(resume_from_checkpoint=resume_point(ctx))
    finish(ctx, trainer, ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "learning_rate", "accuracy"))


def preference_data(ctx: RunContext, model, tokenizer) -> Dataset:
    """The recipe's pairs; on-policy pairs are sampled from the initial model and kept in ``dpo_pairs.jsonl``."""
    from hyrl.eval.generate import ModelGenerator
    from hyrl.rl.pairs import on_policy_pairs, write_pairs
    from hyrl.tasks import get_task

    r: Recipe = ctx.recipe
    algo = r.algo
    assert isinstance(algo, DPOAlgo)
    if algo.pairs == "synthetic" or r.data.path is not None:  # a user's file has no verifier to judge samples
        return dpo_dataset(r.data, seed=r.seed)
    rows = on_policy_pairs(ModelGenerator(model, tokenizer), get_task(r.data.task, **r.data.task_options),
                           load_examples(r.data, "train"), num_samples=algo.num_samples,
                           temperature=algo.temperature, max_new_tokens=r.rollout.max_new_tokens, seed=r.seed)
    if not rows:
        raise ValueError("dpo: the model answered every training prompt right in every sample, so there are no "
                         "on-policy pairs (fix: a harder task, or algo.pairs: synthetic)")
    write_pairs(rows, ctx.run_dir / "dpo_pairs.jsonl")
    print(f"hyrl: {len(rows)} on-policy preference pairs from {r.data.num_train} prompts "
          f"({ctx.run_dir / 'dpo_pairs.jsonl'})")
    return Dataset.from_list(rows)
