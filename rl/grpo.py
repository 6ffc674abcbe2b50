"""GRPO: hyrl's rollout workers sample, TRL's GRPOTrainer learns, the weights go back to the workers every step.

One step, as TRL drives it through hyrl's hooks:

    PoolRollout.__call__            sync weights if the learner moved, then generate on the RolloutPool
    TRL + GuardedReward             rewards -> group-relative advantages
    HyrlGRPOTrainer.compute_loss    learner-vs-rollout mismatch -> per-token correction -> TRL's loss -> step
    MetricsCallback                 metrics.jsonl + TensorBoard

The learner runs in Ray actors (``Learner``, ``learner.num_workers`` of them, data-parallel) beside the rollout
workers; the driver reserves their resources (``hyrl.rl.cluster``), starts them and waits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig

from hyrl.config import GRPOAlgo, Recipe
from hyrl.eval.in_loop import eval_callbacks
from hyrl.faults import fault_point
from hyrl.rl.data import load_examples
from hyrl.rl.grpo_trainer import HyrlGRPOTrainer, ParityGateError
from hyrl.rl.guard import GuardedReward, RewardFailureLimit, RewardFailures
from hyrl.rl.reward_process import RewardProcess
from hyrl.rl.rewards import get_reward
from hyrl.rl.rollout_func import PoolRollout
from hyrl.rl.run import CompleteCheckpoints, MetricsCallback, RunContext, quiet_console, resume_point, trainer_args
from hyrl.rollout.batch import Sampling
from hyrl.tracking import GRPO_PANELS

# algo.loss -> TRL GRPOConfig settings. gspo is GRPO with sequence-level importance ratios (Zheng et al. 2025);
# dapo adds the higher upper clip and drops truncated completions (Yu et al. 2025); dr_grpo drops the std scaling.
LOSSES: dict[str, dict[str, Any]] = {
    "grpo": dict(loss_type="grpo", scale_rewards="group"),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
    "dapo": dict(loss_type="dapo", scale_rewards="group", mask_truncated_completions=True),
    "gspo": dict(loss_type="grpo", scale_rewards="group", importance_sampling_level="sequence"),
}


def grpo_dataset(recipe: Recipe) -> Dataset:
    """Prompts with the fields rewards need (``answer``, ``task``) as extra columns."""
    examples = load_examples(recipe.data, "train")
    return Dataset.from_list([{"prompt": e.prompt, "answer": e.answer, "task": recipe.data.task} for e in examples])


def grpo_args(ctx: RunContext) -> GRPOConfig:
    r, algo = ctx.recipe, ctx.recipe.algo
    assert isinstance(algo, GRPOAlgo)
    epsilon_high = algo.epsilon_high or (0.28 if algo.loss == "dapo" else algo.epsilon)
    per_worker = algo.prompts_per_step * algo.num_generations // r.learner.num_workers  # the global batch, split
    args = {**trainer_args(ctx), "per_device_train_batch_size": per_worker}
    if r.learner.sharding == "fsdp2":
        args.update(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "reshard_after_forward": True})
    return GRPOConfig(
        **args, **LOSSES[algo.loss], num_generations=algo.num_generations,
        max_completion_length=r.rollout.max_new_tokens, temperature=r.rollout.temperature, top_p=r.rollout.top_p,
        beta=algo.kl_coef, epsilon=algo.epsilon, epsilon_high=epsilon_high, reward_weights=algo.reward_weights,
        use_vllm=False, log_completions=False,
        # Task examples are already drawn at random; keeping their order lets async rollouts know the next prompts.
        shuffle_dataset=False,
    )


def upcoming_prompts(prompts: list[str], per_step: int, repeats: int) -> Callable[[int], list[str]]:
    """The prompts TRL's unshuffled RepeatSampler hands the rollout at a given step (each repeated ``repeats``x)."""
    usable = len(prompts) - len(prompts) % per_step

    def at(step: int) -> list[str]:
        start = (step * per_step) % usable
        return [p for p in prompts[start : start + per_step] for _ in range(repeats)]

    return at


class StepTimer(TrainerCallback):
    """Wall time per optimizer step and learner throughput, as metrics."""

    def __init__(self, trainer_ref: list):
        self.trainer_ref, self.t0 = trainer_ref, time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        fault_point("learner-step", state.global_step + 1)
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer_ref[0].add_metrics({"time/step_seconds": time.perf_counter() - self.t0})


def _reward_fn(name: str, algo: GRPOAlgo):
    """Built-in rewards run in-process; a user's ``module:function`` runs in its own process with a timeout."""
    if ":" not in name:
        return get_reward(name)
    get_reward(name)  # fail here, naming the reward, if it does not import
    return RewardProcess(name, timeout_s=algo.reward_timeout_s, memory_mb=algo.reward_memory_mb)


def build_trainer(ctx: RunContext, pool, teacher_dir: Path | None = None) -> HyrlGRPOTrainer:
    """TRL's GRPO trainer wired to hyrl's rollout pool, guarded rewards and mismatch correction (and, for on-policy
    distillation, a teacher that sets each token's advantage)."""
    from hyrl.model.loading import load_causal_lm

    r, algo = ctx.recipe, ctx.recipe.algo
    assert isinstance(algo, GRPOAlgo)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.init_model_dir))
    failures = RewardFailures(max_failures=algo.reward_max_failures)
    rewards = [GuardedReward(name.rpartition(":")[2], _reward_fn(name, algo), failures) for name in algo.rewards]
    sampling = Sampling(max_tokens=r.rollout.max_new_tokens, temperature=r.rollout.temperature, top_p=r.rollout.top_p,
                        seed=r.seed)
    dataset = grpo_dataset(r)
    rollout = PoolRollout(pool, tokenizer, sampling, max_staleness=r.rollout.max_staleness,
                          upcoming=upcoming_prompts(dataset["prompt"], algo.prompts_per_step, algo.num_generations),
                          colocated=r.ray.placement == "colocate")
    trainer_ref: list = []
    trainer = HyrlGRPOTrainer(
        model=load_causal_lm(ctx.init_model_dir, r.model.implementation), reward_funcs=rewards,
        args=grpo_args(ctx), train_dataset=dataset, processing_class=tokenizer, rollout_func=rollout,
        callbacks=[MetricsCallback(ctx.metrics), StepTimer(trainer_ref), CompleteCheckpoints(ctx),
                   *eval_callbacks(ctx, lambda model, tok: _synced(rollout, trainer_ref[0], pool, tok))],
        correction=algo.mismatch, parity_gate=algo.parity_gate, reward_failures=failures,
        teacher=load_causal_lm(teacher_dir, "hyrl") if teacher_dir is not None else None,
    )
    trainer_ref.append(trainer)
    return quiet_console(trainer, bar=False)  # the driver draws the run's bar from metrics.jsonl (hyrl.rl.progress)


def _synced(rollout: PoolRollout, trainer, pool, tokenizer: PreTrainedTokenizerBase):
    """In-loop evaluation samples from the rollout pool, first brought up to the learner's weights."""
    from hyrl.eval.generate import EngineGenerator
    from hyrl.rl.learners import is_sharded

    rollout.settle()
    if not is_sharded(trainer.model):  # sharded weights need every rank to gather; the rollout step syncs them
        rollout.sync(trainer)
    return EngineGenerator(pool, tokenizer)


class Learner:
    """One learner worker (a Ray actor): TRL's GRPO trainer, data-parallel with the other workers; rank 0 also
    owns the rollout pool it was handed (rollouts, weight pushes, held-out accuracy, the final model)."""

    def __init__(self, recipe: Recipe, run_dir: str, init_model_dir: str, pool, teacher_dir: str | None = None):
        from hyrl.rl.run import set_threads

        set_threads()
        self.ctx = RunContext(recipe, Path(run_dir), Path(init_model_dir))
        self.pool = pool
        self.teacher_dir = Path(teacher_dir) if teacher_dir is not None else None

    def rendezvous(self) -> tuple[str, int]:
        from hyrl.rl.learners import free_port

        return free_port()

    def train(self, rank: int = 0, world_size: int = 1, addr: str = "127.0.0.1", port: int = 0) -> dict[str, Any]:
        from hyrl.rl.learners import full_named_tensors, gathered_state_dict, join_group
        from hyrl.rl.run import finish
        from hyrl.rollout.weights import checksum

        join_group(rank, world_size, addr, port)
        trainer = build_trainer(self.ctx, self.pool, self.teacher_dir)
        lead = rank == 0
        resumed_from = resume_point(self.ctx)
        trainer.train(resume_from_checkpoint=resumed_from)
        trainer.rollout_func.close()
        trainer.rollout_func.sync(trainer)
        weights = checksum(full_named_tensors(trainer.model))
        state = gathered_state_dict(trainer.model)  # sharded weights: every rank gathers, rank 0 saves
        summary = {"rank": rank, "steps": trainer.state.global_step, "weights_checksum": weights,
                   "reward_failures": trainer.reward_failures.messages}  # each rank scores its own completions
        if lead:
            finish(self.ctx, trainer, GRPO_PANELS, state)
            summary.update(policy_version=self.pool.version,
                           rollout_retries=self.pool.retries, rollout_resyncs=self.pool.resyncs,
                           resumed_from=resumed_from)
        return summary


class LearnerDied(RuntimeError):
    """A learner worker's process died (killed, out of memory, a lost node): named, with where to resume."""


def _train_learners(learners, ctx: RunContext) -> list[dict[str, Any]]:
    """``learners.train()``, with hyrl's own errors unwrapped from Ray's and a dead learner named."""
    import ray

    try:
        return learners.train()
    except ray.exceptions.RayTaskError as e:
        if isinstance(getattr(e, "cause", None), ParityGateError | RewardFailureLimit):
            raise e.cause from None
        raise
    except ray.exceptions.ActorDiedError as e:
        from hyrl.rl.run import latest_checkpoint
        from hyrl.tracking import read_metrics

        steps = [r["step"] for r in read_metrics(ctx.run_dir / "metrics.jsonl") if "loss" in r]
        text = str(e)
        cause = ("it was killed (SIGKILL: out of memory, a preempted node or kill -9)" if "SIGKILL" in text
                 or "killed" in text.lower() else text.strip().splitlines()[0][:300])
        last = latest_checkpoint(ctx)
        where = (f"resume from {last} with checkpoint.resume=true" if last is not None
                 else "no checkpoint was saved yet (checkpoint.every_n_steps)")
        raise LearnerDied(f"a learner worker died after step {max(steps, default=0)}: {cause}; its log is in "
                          f"{ctx.run_dir / 'ray'}; {where}") from None


def warm_start_done(ctx: RunContext) -> bool:
    return (ctx.run_dir / "warm_start" / "final" / "config.json").is_file()


def warm_start(ctx: RunContext) -> RunContext:
    """Run the recipe's SFT warm start into ``<run_dir>/warm_start`` (once) and start GRPO from its model."""
    from hyrl.config import EvalConfig, OptimConfig, SFTAlgo
    from hyrl.eval.in_loop import accuracy_summary
    from hyrl.rl.sft import train_sft

    ws = ctx.recipe.algo.warm_start
    sft_dir = ctx.run_dir / "warm_start"
    if not warm_start_done(ctx):
        sft_recipe = ctx.recipe.model_copy(update={
            "name": f"{ctx.recipe.name}: SFT warm start",  # the title of warm_start/curves.png
            "algo": SFTAlgo(),
            "optim": OptimConfig(lr=ws.lr, max_steps=ws.steps, batch_size=ws.batch_size, warmup_steps=10,
                                 lr_schedule=ws.lr_schedule),
            "checkpoint": ctx.recipe.checkpoint.model_copy(update={"every_n_steps": 0, "resume": False}),
            "eval": EvalConfig(),  # GRPO's in-loop evaluation is for GRPO steps
            "logging": ctx.recipe.logging.model_copy(update={"run_dir": sft_dir}),
        })
        sft_ctx = RunContext(sft_recipe, sft_dir, ctx.init_model_dir)
        train_sft(sft_ctx)
        for line in accuracy_summary(sft_ctx).splitlines():
            print(f"hyrl: {sft_recipe.name}: {line}")
    return RunContext(ctx.recipe, ctx.run_dir, sft_dir / "final")


def train_grpo(ctx: RunContext, teacher_dir: Path | None = None) -> dict[str, Any]:
    """Place the rollout pool and the learner workers on Ray and train; returns rank 0's summary, plus every
    learner's final ``weights_checksum`` and the rollout workers' health reports."""
    from hyrl.rl.cluster import check_local_gpus, cluster, place
    from hyrl.rl.learners import LearnerGroup
    from hyrl.rl.progress import watch_metrics
    from hyrl.rollout.pool import build_pool
    from hyrl.rollout.weights import read_folder

    r = ctx.recipe
    check_local_gpus(r)
    # On CPU the engines start (~30 s: Ray, vLLM import, engine build) on the core the warm start leaves idle, on the
    # initial weights, and get the warm start's weights as version 0 when it is done. On GPUs the warm start runs
    # first, so it never shares a GPU with an engine.
    overlap = (r.algo.warm_start is not None and not warm_start_done(ctx)
               and r.rollout.num_gpus_per_worker == 0 and r.learner.num_gpus_per_worker == 0)
    if r.algo.warm_start is not None and not overlap:
        ctx = warm_start(ctx)
    with cluster(r, ctx.run_dir):
        placement = place(r)
        pool = build_pool(r, ctx.init_model_dir, ctx.run_dir, placement=placement, wait=not overlap,
                          extra={"enable_sleep_mode": True} if r.ray.placement == "colocate" else None)
        if overlap:
            ctx = warm_start(ctx)
            pool.wait_ready()
            pool.update_weights(read_folder(ctx.init_model_dir), version=0)
        try:
            teacher = str(teacher_dir) if teacher_dir else None
            learners = LearnerGroup(
                Learner, (r, str(ctx.run_dir), str(ctx.init_model_dir), pool, teacher),
                num_workers=r.learner.num_workers, num_cpus=r.learner.num_cpus_per_worker,
                num_gpus=r.learner.num_gpus_per_worker, placement=placement,
                env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
            with watch_metrics(ctx.run_dir / "metrics.jsonl", r.optim.max_steps, enabled=r.logging.progress,
                               desc=r.name):
                summaries = _train_learners(learners, ctx)
            summary = {**summaries[0], "weights_checksums": [s["weights_checksum"] for s in summaries],
                       "reward_failures": [m for s in summaries for m in s["reward_failures"]],
                       "rollout_health": pool.health()}
        finally:
            pool.shutdown()
    (ctx.run_dir / "workers.json").write_text(json.dumps({  # who trained and what each worker ended on
        "learners": [{"rank": s["rank"], "weights_checksum": s["weights_checksum"]} for s in summaries],
        "rollout": summary["rollout_health"], "policy_version": summary["policy_version"],
        "rollout_retries": summary["rollout_retries"], "rollout_resyncs": summary["rollout_resyncs"]}, indent=2))
    if summary["resumed_from"]:
        print(f"hyrl: resumed from {summary['resumed_from']}")
    for message in summary["reward_failures"]:
        print(f"hyrl: {message} (that step contributed no gradient)")
    print(f"hyrl: {r.name}: {summary['steps']} GRPO steps ({r.learner.num_workers} learner, {r.rollout.num_workers} "
          "rollout workers)")
    return summary
