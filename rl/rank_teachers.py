"""``hyrl teachers rank``: which teacher helps this student most, measured rather than assumed.

For each teacher, on one probe task: the teacher's own held-out accuracy, the student-teacher per-token KL before
training (on the probe's prompt + answer sequences), and the student's held-out gain and loss drop after the same
short distillation (same seed, data, steps and learning rate). Teachers are ranked by the student's gain, then by
its loss drop; the most accurate teacher need not be the best one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from hyrl.eval.greedy import greedy_accuracy
from hyrl.model.loading import load_causal_lm
from hyrl.rl.teacher import same_tokenizer
from hyrl.tasks import Example, Task, get_task
from hyrl.tasks.files import is_task_file


@dataclass
class RankSettings:
    student: Path
    teachers: list[Path]
    prompts: str = "arithmetic"  # a task family or a JSONL file with prompt/answer rows
    task_options: dict[str, Any] = field(default_factory=dict)
    mode: str = "auto"  # auto: logit_kd when the tokenizers match, else offline
    steps: int = 60
    lr: float = 3e-3
    batch_size: int = 32
    num_train: int = 512
    num_eval: int = 64
    max_new_tokens: int = 8
    seed: int = 0


def _task(settings: RankSettings) -> Task:
    return get_task(settings.prompts, **settings.task_options)


@torch.no_grad()
def student_teacher_kl(student, teacher, tokenizer, examples: list[Example]) -> float:
    """Mean over answer tokens of KL(p_student || p_teacher) on prompt + reference answer (+ EOS)."""
    total, n = 0.0, 0
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False).input_ids
        a = [*tokenizer(ex.answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        ids = torch.tensor([p + a])
        ls = torch.log_softmax(student(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
        lt = torch.log_softmax(teacher(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
        total += (ls.exp() * (ls - lt)).sum().item()
        n += len(a)
    return total / max(1, n)


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(path.resolve().parts[-2:]))


def rank_teachers(settings: RankSettings, out_dir: Path) -> list[dict[str, Any]]:
    """Measure every teacher, distill briefly from each, write ranking.{json,md,png}; returns the ranked rows."""
    from hyrl.config import Recipe
    from hyrl.rl.distill import train_distill
    from hyrl.rl.run import prepare_run
    from hyrl.tracking import read_metrics

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    task = _task(settings)
    held = task.make(settings.num_eval, 10_000) if not is_task_file(settings.prompts) else None
    data = ({"path": settings.prompts} if is_task_file(settings.prompts)
            else {"task": settings.prompts, "task_options": settings.task_options})
    data.update(num_train=settings.num_train, num_eval=settings.num_eval)
    s_tok = AutoTokenizer.from_pretrained(str(settings.student))
    student = load_causal_lm(settings.student).eval()
    if held is None:
        from hyrl.config import DataConfig
        from hyrl.rl.data import load_examples

        held = load_examples(DataConfig(**data), "eval")
    before = greedy_accuracy(student, s_tok, task, held, settings.max_new_tokens)
    rows = []
    for i, teacher_dir in enumerate(settings.teachers):
        t_tok = AutoTokenizer.from_pretrained(str(teacher_dir))
        teacher = load_causal_lm(teacher_dir).eval()
        same = same_tokenizer(s_tok, t_tok)
        mode = settings.mode if settings.mode != "auto" else ("logit_kd" if same else "offline")
        recipe = Recipe.model_validate({
            "name": f"rank-{i}-{_slug(teacher_dir)}", "seed": settings.seed,
            "model": {"path": str(settings.student)}, "data": data,
            "algo": {"type": "distill", "mode": mode, "teacher": {"path": str(teacher_dir)}},
            "optim": {"lr": settings.lr, "max_steps": settings.steps, "batch_size": settings.batch_size,
                      "warmup_steps": min(10, settings.steps // 5)},
            "rollout": {"max_new_tokens": settings.max_new_tokens},
            "checkpoint": {"every_n_steps": 0},
            "logging": {"run_dir": str(out_dir / f"{i}-{_slug(teacher_dir)}"), "every_n_steps": 1,
                        "tensorboard": False, "progress": False},
        })
        ctx = prepare_run(recipe)
        train_distill(ctx)
        after = greedy_accuracy(load_causal_lm(ctx.final_dir).eval(), s_tok, task, held, settings.max_new_tokens)
        losses = [r["loss"] for r in read_metrics(ctx.metrics.path) if "loss" in r]
        rows.append({
            "teacher": str(teacher_dir), "mode": mode, "same_tokenizer": same,
            "teacher_accuracy": greedy_accuracy(teacher, t_tok, task, held, settings.max_new_tokens),
            "kl_before": student_teacher_kl(student, teacher, s_tok, held) if same else None,
            "student_before": before, "student_after": after, "gain": after - before,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_drop": (losses[0] - losses[-1]) if losses else None,
        })
    rows.sort(key=lambda r: (-r["gain"], -(r["loss_drop"] or 0.0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    (out_dir / "ranking.json").write_text(json.dumps({"settings": asdict(settings), "ranking": rows}, indent=2,
                                                     default=str))
    (out_dir / "ranking.md").write_text(ranking_table(rows))
    _plot(rows, out_dir / "ranking.png")
    return rows


def ranking_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: rank, teacher, mode, teacher accuracy, KL before, student before -> after (gain), loss drop."""
    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    lines = ["| rank | teacher | mode | teacher acc | KL(student, teacher) | student before -> after | gain | "
             "loss drop |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['teacher']} | {r['mode']} | {f(r['teacher_accuracy'])} | "
                     f"{f(r['kl_before'])} | {f(r['student_before'])} -> {f(r['student_after'])} | "
                     f"{f(r['gain'], '+.3f')} | {f(r['loss_drop'])} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["teacher"]).parent.name + "/" + Path(r["teacher"]).name for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["teacher_accuracy"] for r in rows], 0.4, label="teacher accuracy")
    ax.bar([x + 0.2 for x in xs], [r["gain"] for r in rows], 0.4, label="student gain")
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7)
    ax.set_title("teachers, ranked by the student's held-out gain")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
