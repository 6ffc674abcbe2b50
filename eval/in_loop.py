"""Held-out evaluation during training: a ``TrainerCallback`` that scores the recipe's ``eval:`` tasks at the start
of the run, every N steps, and at the end.

This is the one place a run's accuracy comes from: the end-of-run report, the in-loop curve and ``hyrl eval`` all
call ``evaluate_tasks`` on the held-out split with the same settings, so one checkpoint gets one number. GRPO
evaluates on its rollout pool (synced to the learner first); SFT and DPO, which have no engine, decode with the
learner's model in-process. Results go to ``<run_dir>/eval/step-N/results.json`` and, as ``eval/<task>/accuracy``,
``eval/<task>/pass@k`` and ``eval/<task>/mean_length``, to the run's metrics (JSONL + TensorBoard).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from transformers import TrainerCallback

from hyrl.config import Recipe
from hyrl.eval.generate import Generator, ModelGenerator
from hyrl.eval.run import EvalSettings, build_tasks, evaluate_tasks


def settings_from_recipe(recipe: Recipe) -> EvalSettings:
    """The recipe's ``eval:`` section as ``EvalSettings`` (defaults: the training task, data.num_eval held-out
    prompts drawn with data.eval_seed, greedy)."""
    e = recipe.eval
    tasks = e.tasks or [recipe.data.task]
    options = e.task_options or ({recipe.data.task: dict(recipe.data.task_options)} if not e.tasks else {})
    return EvalSettings(tasks=tasks, task_options=options, num_examples=e.num_examples or recipe.data.num_eval,
                        samples=e.num_samples, temperature=e.temperature,
                        max_new_tokens=e.max_new_tokens or recipe.rollout.max_new_tokens,
                        seed=recipe.data.eval_seed, probe_prompts=0, throughput_prompts=0, memory_lengths=[])


def describe(settings: EvalSettings) -> str:
    """What an accuracy measured, in words, e.g. ``greedy, 128 held-out prompts``."""
    t = settings.sampling_temperature
    how = "greedy" if t == 0 else f"{settings.samples} sample(s) per prompt at temperature {t:g}"
    return f"{how}, {settings.num_examples} held-out prompts"


class InLoopEval(TrainerCallback):
    """Evaluate at the first step, every ``recipe.eval.every_n_steps`` optimizer steps, and at the last step."""

    def __init__(self, ctx, make_generator: Callable[..., Generator] | None = None) -> None:
        self.ctx, self.settings = ctx, settings_from_recipe(ctx.recipe)
        self.tasks = build_tasks(self.settings)
        self.every = ctx.recipe.eval.every_n_steps
        self.make_generator = make_generator or (lambda model, tokenizer: ModelGenerator(model, tokenizer))
        self.history: dict[int, dict] = {}  # step -> per-task results

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step == 0 and state.is_world_process_zero:  # a resumed run was scored when it got there
            self.evaluate(0, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            self.evaluate(state.global_step, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step not in self.history and state.is_world_process_zero:
            self.evaluate(state.global_step, model, processing_class)

    def evaluate(self, step: int, model, tokenizer) -> dict:
        results, rows = evaluate_tasks(self.make_generator(model, tokenizer), self.tasks, self.settings)
        out = self.ctx.run_dir / "eval" / f"step-{step}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"step": step, "measured": describe(self.settings),
                                                      "tasks": results}, indent=2))
        with open(out / "samples.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.ctx.metrics.log(step, {f"eval/{task}/{k}": v for task, m in results.items() for k, v in m.items()
                                    if k == "accuracy" or k.startswith("pass@") or k == "mean_length"})
        self.history[step] = results
        return results


def eval_callbacks(ctx, make_generator: Callable[..., Generator] | None = None) -> list[TrainerCallback]:
    """The run's held-out evaluation (always: at least the start and the end of the run)."""
    return [InLoopEval(ctx, make_generator)]


def accuracy_summary(ctx) -> str:
    """One line per evaluated task: first and last held-out accuracy of the run, and what was measured."""
    from hyrl.tracking import read_metrics

    settings, path = settings_from_recipe(ctx.recipe), ctx.run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    lines = []
    for key in build_tasks(settings):
        points = [(r["step"], r[f"eval/{key}/accuracy"]) for r in records if f"eval/{key}/accuracy" in r]
        if points:
            (s0, a0), (s1, a1) = points[0], points[-1]
            lines.append(f"held-out accuracy on {key} ({describe(settings)}): {a0:.3f} at step {s0} -> {a1:.3f} "
                         f"at step {s1}")
    return "\n".join(lines)
