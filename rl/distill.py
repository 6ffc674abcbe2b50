"""Distillation from a chosen teacher, in three modes (see ``hyrl.config.DistillAlgo``).

- offline: teacher answers for the training prompts come from hyrl's rollout workers (or an OpenAI-compatible
  server) and are cached in ``<run_dir>/teacher_answers.jsonl``; the student is SFT-trained on them (TRL SFT).
- logit_kd: TRL's SFTTrainer with the loss replaced by forward KL to the teacher's top-k next-token distribution.
- on_policy: hyrl's GRPO pipeline (rollout pool, weight sync, mismatch correction) with the loss replaced by the
  per-token reverse KL(student || teacher) over the vocabulary at each position the student sampled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hyrl.config import DistillAlgo, GRPOAlgo, SFTAlgo
from hyrl.eval.in_loop import eval_callbacks
from hyrl.model.loading import load_causal_lm
from hyrl.rl.data import load_examples, sft_dataset
from hyrl.rl.run import (
    CompleteCheckpoints,
    MetricsCallback,
    RunContext,
    finish,
    quiet_console,
    resume_point,
    trainer_args,
)
from hyrl.rl.teacher import check_same_tokenizer, server_answers, topk_forward_kl, topk_logprobs


def train_distill(ctx: RunContext) -> dict[str, Any]:
    """Run the recipe's distillation mode; token-level modes first check the tokenizers match."""
    algo = ctx.recipe.algo
    assert isinstance(algo, DistillAlgo)
    if algo.mode != "offline":
        check_same_tokenizer(ctx.init_model_dir, algo.teacher.path, algo.mode)
    return {"offline": offline, "logit_kd": logit_kd, "on_policy": on_policy}[algo.mode](ctx)


# --- offline -----------------------------------------------------------------------------------------------------

def teacher_answers(ctx: RunContext) -> list[dict[str, Any]]:
    """One teacher answer per training prompt, scored by the task verifier; cached in the run folder."""
    from hyrl.tasks import get_task

    r, algo = ctx.recipe, ctx.recipe.algo
    examples = load_examples(r.data, "train")
    cache = ctx.run_dir / "teacher_answers.jsonl"
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        if [row["prompt"] for row in rows] == [e.prompt for e in examples]:
            print(f"hyrl: reusing {len(rows)} teacher answers from {cache}")
            return rows
    prompts = [e.prompt for e in examples]
    t = algo.teacher
    if t.server is not None:
        texts = []
        for i in range(0, len(prompts), 64):
            texts += server_answers(t.server, t.model, prompts[i:i + 64], max_tokens=r.rollout.max_new_tokens,
                                    temperature=t.temperature)
    else:
        texts = _pool_answers(ctx, prompts)
    task = get_task(r.data.task, **r.data.task_options) if r.data.path is None else None
    rows = []
    for e, text in zip(examples, texts):
        score = task.verify(text, e.answer).score if task is not None else float(text.strip() == e.answer)
        rows.append({"prompt": e.prompt, "answer": e.answer, "completion": text.strip(), "score": score})
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(cache)
    return rows


def _pool_answers(ctx: RunContext, prompts: list[str]) -> list[str]:
    """The teacher's completions from a rollout pool on the teacher's weights (one Ray actor, shut down after)."""
    import ray

    from hyrl.rollout.batch import Sampling
    from hyrl.rollout.pool import build_pool, init_ray

    r, t = ctx.recipe, ctx.recipe.algo.teacher
    tokenizer = AutoTokenizer.from_pretrained(str(t.path))
    init_ray(ctx.run_dir, num_cpus=2)
    pool = None
    try:
        pool = build_pool(r, t.path, ctx.run_dir)
        ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        batch = pool.generate(ids, Sampling(max_tokens=r.rollout.max_new_tokens, temperature=t.temperature,
                                            seed=r.seed))
    finally:
        if pool is not None:
            pool.shutdown()
        ray.shutdown()
    return tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)


def offline(ctx: RunContext) -> dict[str, Any]:
    """SFT on the teacher's answers (only the verified ones with ``filter_correct``)."""
    from hyrl.rl.sft import train_sft

    algo = ctx.recipe.algo
    rows = teacher_answers(ctx)
    teacher_acc = sum(row["score"] for row in rows) / max(1, len(rows))
    kept = [row for row in rows if row["score"] >= 1.0] if algo.filter_correct else rows
    if not kept:
        raise ValueError(f"algo.filter_correct: none of the teacher's {len(rows)} answers is correct; nothing to "
                         "train on (fix: a stronger teacher, or filter_correct: false)")
    print(f"hyrl: teacher answered {teacher_acc:.3f} of {len(rows)} training prompts correctly; training on "
          f"{len(kept)}")
    ctx.metrics.log(0, {"distill/teacher_accuracy": teacher_acc, "distill/kept_answers": len(kept)})
    dataset = Dataset.from_list([{"prompt": row["prompt"], "completion": row["completion"]} for row in kept])
    sft_ctx = RunContext(ctx.recipe.model_copy(update={"algo": SFTAlgo(max_length=algo.max_length)}), ctx.run_dir,
                         ctx.init_model_dir)
    train_sft(sft_ctx, dataset=dataset)
    return {"teacher_accuracy": teacher_acc, "kept": len(kept)}


# --- logit_kd ----------------------------------------------------------------------------------------------------

class TopKDistillTrainer(SFTTrainer):
    """TRL's SFTTrainer (data, collation, checkpoints) with the loss replaced by top-k forward KL to a teacher."""

    def __init__(self, *args, teacher, top_k: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.top_k = teacher.to(self.accelerator.device).eval(), top_k
        self._kl: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        mask = (inputs["labels"][:, 1:] != -100).float()  # positions that predict an answer token
        out = model(input_ids=ids, attention_mask=attn)
        t_logp, t_ids = topk_logprobs(self.teacher, ids, attn, self.top_k)
        loss = topk_forward_kl(out.logits[:, :-1], t_logp[:, :-1], t_ids[:, :-1], mask)
        self._kl.append(loss.item())
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._kl:
            logs["distill/topk_kl"] = sum(self._kl) / len(self._kl)
            self._kl.clear()
        super().log(logs, start_time)


def logit_kd(ctx: RunContext) -> dict[str, Any]:
    """Forward KL to the teacher's top-k log-probs on the data's prompt + answer sequences."""
    r, algo = ctx.recipe, ctx.recipe.algo
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.init_model_dir))
    trainer = TopKDistillTrainer(
        model=load_causal_lm(ctx.init_model_dir, r.model.implementation),
        args=SFTConfig(**trainer_args(ctx), max_length=algo.max_length, completion_only_loss=True),
        train_dataset=sft_dataset(r.data), processing_class=tokenizer,
        callbacks=[MetricsCallback(ctx.metrics), CompleteCheckpoints(ctx), *eval_callbacks(ctx)],
        teacher=load_causal_lm(algo.teacher.path, "hyrl"), top_k=algo.top_k,
    )
    quiet_console(trainer, bar=r.logging.progress)
    trainer.train(resume_from_checkpoint=resume_point(ctx))
    finish(ctx, trainer, ("loss", "distill/topk_kl", "grad_norm", "learning_rate", "accuracy"))
    return {}


# --- on_policy ---------------------------------------------------------------------------------------------------

def on_policy(ctx: RunContext) -> dict[str, Any]:
    """GRPO's pipeline with the reverse-KL loss (the task reward is still computed and logged as progress)."""
    from hyrl.rl.grpo import train_grpo

    algo = ctx.recipe.algo
    grpo = GRPOAlgo(loss="dr_grpo", num_generations=algo.num_generations, prompts_per_step=algo.prompts_per_step,
                    rewards=["exact_match"], mismatch=algo.mismatch, warm_start=algo.warm_start)
    grpo_ctx = RunContext(ctx.recipe.model_copy(update={"algo": grpo}), ctx.run_dir, ctx.init_model_dir)
    return train_grpo(grpo_ctx, teacher_dir=Path(algo.teacher.path).resolve())
