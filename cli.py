"""The ``hyrl`` command: ``hyrl train RECIPE [key.path=value ...]``, ``hyrl validate RECIPE``,
``hyrl eval CHECKPOINT ... --tasks a,b``, ``hyrl tiny OUT``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyrl.config import Recipe, RecipeError, load_recipe, recipe_paths
from hyrl.console import quiet_third_party

EXAMPLES = """examples:
  hyrl validate recipes/sft_tiny.yaml
  hyrl train recipes/sft_tiny.yaml optim.max_steps=50 logging.run_dir=runs/quick
  hyrl train recipes/sft_tiny.yaml checkpoint.resume=true
  hyrl eval runs/sft_tiny/init runs/sft_tiny/final --tasks arithmetic,parity,needle --samples 4
"""


def _workers(recipe: Recipe) -> str:
    """One line on what the recipe asks of the cluster (checked against it only when the run starts)."""
    from hyrl.rl.cluster import bundles

    need = bundles(recipe)
    learner, rollout, where = recipe.learner, recipe.rollout, recipe.ray.address or "a local Ray cluster"
    return (f"{learner.num_workers} learner ({learner.num_gpus_per_worker:g} GPU each, {learner.sharding}), "
            f"{rollout.num_workers} rollout ({rollout.num_gpus_per_worker:g} GPU each), {recipe.ray.placement} "
            f"{recipe.ray.strategy}: {sum(b.get('GPU', 0) for b in need):g} GPUs, "
            f"{sum(b['CPU'] for b in need):g} CPUs on {where}")


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
    t.add_argument("--dense", action="store_true", help="a dense (all-attention) model of the preset's widths")
    _eval_parser(sub)
    _teachers_parser(sub)
    b = sub.add_parser(
        "bundle", help="download an install profile's wheels for an offline machine, in parts of bounded size",
        description="hyrl bundle: the wheel closure of hyrl's install profile for the target's Python and platform, "
                    "minus what the target has, as part-NNN files (<= --max-part-mib) + manifest.json + install.sh.",
        epilog="example (on a machine with PyPI access; the target's `pip freeze` in target-freeze.txt):\n"
               "  hyrl bundle --python 3.12 --platform manylinux_2_28_x86_64 --exclude-installed target-freeze.txt "
               "--max-part-mib 60 bundle/\n  then on the target: bash bundle/install.sh /opt/hyrl-site\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("out", type=Path)
    b.add_argument("--profile", default="gpu", help="hyrl extra to bundle (gpu, cpu)")
    b.add_argument("--requirement", action="append", default=None, metavar="REQ",
                   help="bundle these requirements instead of hyrl[profile] (repeatable)")
    b.add_argument("--python", default="3.12")
    b.add_argument("--platform", action="append", default=None, help="repeatable; default manylinux_2_28_x86_64")
    b.add_argument("--exclude-installed", type=Path, default=None, help="the target's `pip freeze` output")
    b.add_argument("--max-part-mib", type=float, default=60.0)
    b.add_argument("--find-links", action="append", default=[])
    b.add_argument("--no-index", action="store_true")
    b.add_argument("--with", dest="with_", action="append", default=[], metavar="REQ",
                   help="also bundle this requirement, beside hyrl[profile] or --requirement (repeatable)")
    b.add_argument("--override", action="append", default=[], metavar="REQ",
                   help="replace every requirement on REQ's package with REQ while resolving, e.g. "
                        "'llguidance==1.6.1' where a dependency's pin has no wheel (repeatable)")
    b.add_argument("--drop", action="append", default=[], metavar="NAME",
                   help="leave this package out of the closure whoever requires it, e.g. optional GPU kernels "
                        "the target will not use (repeatable)")
    return p


def bundle(args: argparse.Namespace) -> int:
    """``hyrl bundle``: exit 2 with pip's reason when the closure cannot be resolved or downloaded."""
    import tempfile

    from hyrl.bundle import BundleSpec, build_bundle, hyrl_requirements

    if args.exclude_installed is not None and not args.exclude_installed.is_file():
        print(f"hyrl bundle: --exclude-installed {args.exclude_installed}: no such file (fix: `pip freeze > FILE` "
              "on the target)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            reqs = (args.requirement or hyrl_requirements(args.profile, Path(tmp))) + args.with_
            spec = BundleSpec(requirements=reqs, python=args.python, overrides=args.override, drop=args.drop,
                              platforms=args.platform or ["manylinux_2_28_x86_64"],
                              exclude_installed=args.exclude_installed, max_part_mib=args.max_part_mib,
                              find_links=args.find_links, no_index=args.no_index)
            m = build_bundle(spec, args.out)
        except (RuntimeError, FileExistsError, ValueError) as e:  # ValueError: a malformed --override / --with
            print(f"hyrl bundle: {e}", file=sys.stderr)
            return 2
    print(f"hyrl bundle: {len(m['wheels'])} wheels ({len(m['excluded'])} left out as installed), "
          f"{m['total_bytes'] / 2**20:.1f} MiB in {len(m['parts'])} parts -> {args.out}; on the target: "
          f"bash {args.out}/install.sh TARGET")
    return 0


def _teachers_parser(sub) -> None:
    t = sub.add_parser("teachers", help="compare teachers for a student")
    tsub = t.add_subparsers(dest="teachers_command", required=True)
    r = tsub.add_parser(
        "rank", help="rank teachers by the student's held-out gain after a short distillation",
        description="hyrl teachers rank: per teacher, its accuracy, the student-teacher KL before training, and the "
                    "student's held-out gain and loss drop after the same short distillation; writes ranking.json, "
                    "ranking.md and ranking.png.",
        epilog="example:\n  hyrl teachers rank --student runs/sft_tiny/final --teachers runs/teacher_tiny/final,"
               "runs/teacher_weak/final --prompts arithmetic --task-option max_digits=1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--student", type=Path, required=True, help="the student's HF model folder")
    r.add_argument("--teachers", required=True, help="comma-separated teacher model folders")
    r.add_argument("--prompts", default="arithmetic", help="a task family, or a JSONL file of prompt/answer rows")
    r.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--mode", default="auto", choices=["auto", "offline", "logit_kd"],
                   help="auto: logit_kd when the tokenizers match, else offline")
    r.add_argument("--steps", type=int, default=60, help="distillation steps per teacher (the same for all)")
    r.add_argument("--lr", type=float, default=3e-3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, default=Path("runs/teachers"))


def rank(args: argparse.Namespace) -> int:
    """``hyrl teachers rank``: exit 2 naming a missing folder; prints the ranking table."""
    import yaml

    from hyrl.eval.checkpoint import CheckpointError, check_checkpoint
    from hyrl.rl.rank_teachers import RankSettings, rank_teachers, ranking_table

    try:
        teachers = [check_checkpoint(t.strip()) for t in args.teachers.split(",") if t.strip()]
        student = check_checkpoint(args.student)
        options = {}
        for item in args.task_option:
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--task-option {item!r}: expected KEY=VALUE, e.g. max_digits=1")
            options[key] = yaml.safe_load(value)
    except (CheckpointError, ValueError) as e:
        print(f"hyrl teachers rank: {e}", file=sys.stderr)
        return 2
    settings = RankSettings(student=student, teachers=teachers, prompts=args.prompts, task_options=options,
                            mode=args.mode, steps=args.steps, lr=args.lr, seed=args.seed)
    rows = rank_teachers(settings, args.out)
    print(ranking_table(rows), end="")
    print(f"hyrl teachers rank: {args.out / 'ranking.md'}, {args.out / 'ranking.png'}")
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _eval_parser(sub) -> None:
    e = sub.add_parser(
        "eval", help="evaluate checkpoints on tasks (vLLM rollout workers), with fidelity and cost",
        description="hyrl eval: score checkpoints on task families, a needle-in-a-haystack recall probe or your "
                    "own JSONL/Parquet tasks; measure learner-vs-rollout mismatch, rollout tok/s and cache memory "
                    "per sequence; write results.json, samples.jsonl, report.md and plots to --out.",
        epilog="examples:\n  hyrl eval runs/sft_tiny/init runs/sft_tiny/final --tasks arithmetic,needle --samples 4\n"
               "  hyrl eval CKPT --tasks data/gsm8k.jsonl --task-option gsm8k.verifier=math "
               "--task-option 'gsm8k.template=Q: {question}\\nA: '\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("checkpoints", nargs="+", type=Path, help="HF model folders (e.g. <run_dir>/final)")
    e.add_argument("--tasks", default="arithmetic",
                   help="comma-separated task families (arithmetic, reversal, parity, needle) or .jsonl/.parquet files")
    e.add_argument("--task-option", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="a task option, e.g. arithmetic.max_digits=1 or gsm8k.verifier=math (repeatable)")
    e.add_argument("--samples", type=int, default=1, help="samples per prompt; pass@k is reported up to k")
    e.add_argument("--num-examples", type=int, default=64)
    e.add_argument("--max-new-tokens", type=int, default=16)
    e.add_argument("--temperature", type=float, default=None, help="default: 0 for one sample, 1 for several")
    e.add_argument("--seed", type=int, default=10_000, help="held-out example seed (training uses 0)")
    e.add_argument("--context-words", type=_ints, default=[32, 64, 128], help="needle haystack sizes, in words")
    e.add_argument("--memory-lengths", type=_ints, default=[128, 512, 1024],
                   help="context lengths for the cache-memory measurement ('' skips it)")
    e.add_argument("--probe-prompts", type=int, default=16, help="mismatch probe size (0 skips)")
    e.add_argument("--throughput-prompts", type=int, default=16, help="throughput probe size (0 skips)")
    e.add_argument("--baseline", type=Path, default=None, help="a dense model folder to compare cost against")
    e.add_argument("--num-workers", type=int, default=1, help="rollout workers (Ray actors)")
    e.add_argument("--enforce-eager", action="store_true", help="no graph compilation in vLLM (faster start)")
    e.add_argument("--out", type=Path, default=None, help="results folder (default runs/eval/<UTC time>)")
    e.add_argument("--no-progress", action="store_true")


def _task_options(items: list[str]) -> dict[str, dict]:
    """``["gsm8k.verifier=math", "arithmetic.max_digits=1"]`` -> {"gsm8k": {"verifier": "math"}, ...}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        task, dot, name = key.partition(".")
        if not (eq and dot and task and name):
            raise ValueError(f"--task-option {item!r}: expected TASK.KEY=VALUE, e.g. arithmetic.max_digits=1")
        parsed = yaml.safe_load(value) if name != "template" else value.encode().decode("unicode_escape")
        out.setdefault(task, {})[name] = parsed
    return out


def evaluate(args: argparse.Namespace) -> int:
    """``hyrl eval``: exit 2 with the reason for a bad checkpoint, task or option; 0 when results are written."""
    from datetime import UTC, datetime

    from hyrl.eval.checkpoint import CheckpointError
    from hyrl.eval.run import EvalSettings, run_eval

    try:
        settings = EvalSettings(
            tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], task_options=_task_options(args.task_option),
            num_examples=args.num_examples, samples=args.samples, temperature=args.temperature,
            max_new_tokens=args.max_new_tokens, seed=args.seed, context_words=args.context_words,
            probe_prompts=args.probe_prompts, throughput_prompts=args.throughput_prompts,
            memory_lengths=args.memory_lengths)
        out = args.out or Path("runs") / "eval" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        results = run_eval(args.checkpoints, settings, out, baseline=args.baseline, progress=not args.no_progress,
                           num_workers=args.num_workers, enforce_eager=args.enforce_eager)
    except (CheckpointError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"hyrl eval: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"hyrl eval: {len(results['checkpoints'])} checkpoint(s) -> {out / 'report.md'}")
    return 0


def train(recipe: Recipe) -> None:
    """Run one recipe end to end: prepare the run folder, train, evaluate the final model."""
    from hyrl.rl.run import prepare_run

    ctx = prepare_run(recipe)
    if recipe.algo.type == "sft":
        from hyrl.rl.sft import train_sft as run
    elif recipe.algo.type == "dpo":
        from hyrl.rl.dpo import train_dpo as run
    elif recipe.algo.type == "distill":
        from hyrl.rl.distill import train_distill as run
    else:
        from hyrl.rl.grpo import train_grpo as run
    run(ctx)
    _report(ctx)


def _report(ctx) -> None:
    """The run's held-out accuracy, first and last evaluation (the numbers ``hyrl eval`` gives with the same
    settings), to the console and ``summary.txt``."""
    from hyrl.eval.in_loop import accuracy_summary

    summary = accuracy_summary(ctx)
    (ctx.run_dir / "summary.txt").write_text(summary + "\n")
    for line in summary.splitlines():
        print(f"hyrl: {ctx.recipe.name}: {line}")
    print(f"hyrl: {ctx.recipe.name} done -> {ctx.final_dir} (curves in {ctx.run_dir / 'curves.png'})")


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = _parser().parse_args(argv)
    if args.command == "tiny":
        from hyrl.model.presets import build_tiny_dense_model, build_tiny_model

        build = build_tiny_dense_model if args.dense else build_tiny_model
        print(build(args.out, preset=args.preset, seed=args.seed))
        return 0
    if args.command == "eval":
        return evaluate(args)
    if args.command == "teachers":
        return rank(args)
    if args.command == "bundle":
        return bundle(args)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"hyrl: {e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"hyrl: {args.recipe} is valid ({recipe.algo.type}, run folder {recipe.run_dir})")
        print(f"hyrl: workers: {_workers(recipe)}")
        for field, path in recipe_paths(recipe):  # relative paths are from the working directory
            print(f"hyrl: {field}: {path}")
        return 0
    from hyrl.rl.cluster import ClusterError
    from hyrl.rl.finite import NonFiniteError
    from hyrl.rl.grpo import LearnerDied
    from hyrl.rl.grpo_trainer import ParityGateError
    from hyrl.rl.guard import RewardFailureLimit
    from hyrl.rl.teacher import TeacherError

    try:
        train(recipe)
    except (TeacherError, ClusterError, NonFiniteError, LearnerDied, ParityGateError, RewardFailureLimit) as e:
        print(f"hyrl: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
