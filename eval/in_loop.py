"""Evaluation during training: a ``TrainerCallback`` that scores the recipe's ``eval:`` tasks every N steps.

GRPO evaluates on its rollout pool (synced to the learner first); SFT and DPO, which have no engine, sample from
the learner's model in-process. Results go to ``<run_dir>/eval/step-N/results.json`` and, as
``eval/<task>/accuracy`` and ``eval/<task>/pass@k``, to the run's metrics (JSONL + TensorBoard).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from transformers import TrainerCallback

from hyrl.config import Recipe
from hyrl.eval.generate import Generator, ModelGenerator
from hyrl.eval.run import EvalSettings, build_tasks, evaluate_tasks


def settings_from_recipe(recipe: Recipe) -> EvalSettings:
    """The recipe's ``eval:`` section as ``EvalSettings`` (defaults: the training task, held-out seed)."""
    e = recipe.eval
    tasks = e.tasks or [recipe.data.task]
    options = e.task_options or ({recipe.data.task: dict(recipe.data.task_options)} if not e.tasks else {})
    return EvalSettings(tasks=tasks, task_options=options, num_examples=e.num_examples, samples=e.num_samples,
                        temperature=e.temperature, max_new_tokens=e.max_new_tokens or recipe.rollout.max_new_tokens,
                        seed=recipe.data.eval_seed, probe_prompts=0, throughput_prompts=0, memory_lengths=[])


class InLoopEval(TrainerCallback):
    """Every ``recipe.eval.every_n_steps`` optimizer steps: evaluate, log, write the step's results."""

    def __init__(self, ctx, make_generator: Callable[..., Generator] | None = None) -> None:
        self.ctx, self.settings = ctx, settings_from_recipe(ctx.recipe)
        self.tasks = build_tasks(self.settings)
        self.every = ctx.recipe.eval.every_n_steps
        self.make_generator = make_generator or (lambda model, tokenizer: ModelGenerator(model, tokenizer))

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            self.evaluate(state.global_step, model, processing_class)

    def evaluate(self, step: int, model, tokenizer) -> dict:
        results, rows = evaluate_tasks(self.make_generator(model, tokenizer), self.tasks, self.settings)
        out = self.ctx.run_dir / "eval" / f"step-{step}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"step": step, "tasks": results}, indent=2))
        with open(out / "samples.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.ctx.metrics.log(step, {f"eval/{task}/{k}": v for task, m in results.items() for k, v in m.items()
                                    if k == "accuracy" or k.startswith("pass@") or k == "mean_length"})
        return results


def eval_callbacks(ctx, make_generator: Callable[..., Generator] | None = None) -> list[TrainerCallback]:
    """``[InLoopEval]`` when the recipe asks for in-loop evaluation, else ``[]``."""
    return [InLoopEval(ctx, make_generator)] if ctx.recipe.eval.every_n_steps else []
