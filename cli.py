"""The ``hyrl`` command: ``hyrl train RECIPE [key.path=value ...]``, ``hyrl validate RECIPE``, ``hyrl tiny OUT``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyrl.config import Recipe, RecipeError, load_recipe

EXAMPLES = """examples:
  hyrl validate recipes/sft_tiny.yaml
  hyrl train recipes/sft_tiny.yaml optim.max_steps=50 logging.run_dir=runs/quick
  hyrl train recipes/sft_tiny.yaml checkpoint.resume=true
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyrl", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "run a recipe"), ("validate", "check a recipe without running anything")):
        s = sub.add_parser(name, help=help_, description=f"hyrl {name}: {help_}.", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("recipe", type=Path, help="a recipe YAML file (see recipes/)")
        s.add_argument("overrides", nargs="*", metavar="key.path=value", help="override recipe fields")
    t = sub.add_parser("tiny", help="write a tiny random-init Olmo Hybrid + tokenizer as an HF folder")
    t.add_argument("out", type=Path)
    t.add_argument("--preset", default="tiny")
    t.add_argument("--seed", type=int, default=0)
    return p


def train(recipe: Recipe) -> None:
    """Run one recipe end to end: prepare the run folder, train, evaluate the final model."""
    from hyrl.rl.run import prepare_run

    ctx = prepare_run(recipe)
    if recipe.algo.type == "sft":
        from hyrl.rl.sft import train_sft as run
    elif recipe.algo.type == "dpo":
        from hyrl.rl.dpo import train_dpo as run
    else:
        from hyrl.rl.grpo import train_grpo as run
    run(ctx)
    _report(ctx)


def _report(ctx) -> None:
    from transformers import AutoTokenizer

    from hyrl.eval.greedy import greedy_accuracy
    from hyrl.model.loading import load_causal_lm
    from hyrl.rl.data import load_examples
    from hyrl.tasks import get_task

    r = ctx.recipe
    model = load_causal_lm(ctx.final_dir, r.model.implementation)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.final_dir))
    acc = greedy_accuracy(model, tokenizer, get_task(r.data.task, **r.data.task_options), load_examples(r.data, "eval"),
                          r.rollout.max_new_tokens)
    with open(ctx.run_dir / "summary.txt", "w") as f:
        f.write(f"held-out greedy accuracy on {r.data.task}: {acc:.3f}\n")
    print(f"hyrl: {r.name} done -> {ctx.final_dir} (held-out greedy accuracy {acc:.3f}; curves in "
          f"{ctx.run_dir / 'curves.png'})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tiny":
        from hyrl.model.presets import build_tiny_model

        print(build_tiny_model(args.out, preset=args.preset, seed=args.seed))
        return 0
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"hyrl: {e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"hyrl: {args.recipe} is valid ({recipe.algo.type}, run folder {recipe.run_dir})")
        return 0
    train(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
