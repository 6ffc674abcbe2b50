"""Evaluate checkpoints: task metrics on the rollout engines, plus fidelity and cost, into one results folder.

``evaluate_tasks`` is the core (any ``Generator``; used in-loop by training too); ``run_eval`` is ``hyrl eval``:
check every checkpoint first, then per checkpoint start (or reuse) a rollout pool, score the tasks, measure the
learner-vs-rollout mismatch, throughput and per-sequence cache memory, and write ``results.json``,
``samples.jsonl``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hyrl.eval.generate import Generator
from hyrl.eval.metrics import summarize
from hyrl.tasks import Task, Verdict, get_task, split_examples


@dataclass
class EvalSettings:
    """What to evaluate and how; mirrors the ``hyrl eval`` flags and a recipe's ``eval:`` section."""

    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task name (file tasks: file stem)
    num_examples: int = 64
    samples: int = 1  # per prompt; pass@k for k up to this
    temperature: float | None = None  # None: greedy for one sample, 1.0 for several
    max_new_tokens: int = 16
    seed: int = 10_000  # held-out examples (training uses seed 0)
    context_words: list[int] = field(default_factory=lambda: [32, 64, 128])  # needle lengths
    probe_prompts: int = 16  # mismatch probe; 0 skips the fidelity measurement
    throughput_prompts: int = 16  # sequences in the throughput probe; 0 skips it
    memory_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024])  # 0-length list skips it

    @property
    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature is not None else (0.0 if self.samples == 1 else 1.0)


def build_tasks(settings: EvalSettings) -> dict[str, Task]:
    """Result key -> task; ``needle`` expands to one key per context length (``needle/64``).

    Raises ``KeyError`` naming the unknown task (and listing the available ones) before anything runs.
    """
    from hyrl.tasks.files import is_task_file

    out: dict[str, Task] = {}
    for spec in settings.tasks:
        key = Path(spec).stem if is_task_file(spec) else spec
        options = settings.task_options.get(key, {})
        if spec == "needle":
            for words in settings.context_words:
                out[f"needle/{words}"] = get_task("needle", **{**options, "context_words": words})
        else:
            out[key] = get_task(spec, **options)
    return out


def _verify(task: Task, completion: str, answer: str) -> tuple[Verdict, bool]:
    """The task's verdict; a verifier that raises fails only this sample, with the error as the reason."""
    try:
        v = task.verify(completion, answer)
        return Verdict(float(v.score), str(v.reason)), False
    except Exception as e:  # user verifiers are user code
        return Verdict(0.0, f"verifier raised {type(e).__name__}: {e}"), True


def evaluate_tasks(generate: Generator, tasks: dict[str, Task], settings: EvalSettings, *,
                   progress: bool = False) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per task: metrics (``summarize`` + verifier errors, prompt tokens, a few failure reasons) and per-sample rows."""
    results, rows = {}, []
    for key, task in tqdm(tasks.items(), desc="tasks", disable=not progress, leave=False):
        examples = split_examples(task, settings.num_examples, settings.seed, "eval")
        gens = generate([e.prompt for e in examples], n=settings.samples, max_tokens=settings.max_new_tokens,
                        temperature=settings.sampling_temperature, seed=settings.seed)
        scores, errors, reasons = [], 0, []
        for ex, completions, lengths in zip(examples, gens.completions, gens.lengths):
            row_scores = []
            for completion, length in zip(completions, lengths):
                verdict, crashed = _verify(task, completion, ex.answer)
                errors += crashed
                row_scores.append(verdict.score)
                if verdict.score < 1.0 and len(reasons) < 3:
                    reasons.append(verdict.reason)
                rows.append({"task": key, "prompt": ex.prompt, "answer": ex.answer, "completion": completion,
                             "tokens": length, "score": verdict.score, "reason": verdict.reason})
            scores.append(row_scores)
        metrics = summarize(scores, gens.lengths)
        metrics.update(verifier_errors=errors, failure_examples=reasons, seconds=gens.seconds,
                       prompt_tokens=sum(gens.prompt_tokens) / max(1, len(gens.prompt_tokens)))
        results[key] = metrics
    return results, rows


# ---------------------------------------------------------------------------------------------------------------
# hyrl eval: many checkpoints, engines on Ray, one results folder.
# ---------------------------------------------------------------------------------------------------------------

_CONFIG_NOISE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


def _arch(path: Path) -> dict:
    """The config fields that decide whether an engine can take this checkpoint's weights in place."""
    cfg = json.loads((path / "config.json").read_text())
    return {k: v for k, v in cfg.items() if k not in _CONFIG_NOISE}


def _load_learner(path: Path):
    """The training-side model of a checkpoint (hyrl's for Olmo Hybrid, transformers' otherwise), fp32."""
    from hyrl.model.loading import load_causal_lm

    return load_causal_lm(path, "hyrl").eval()


def _throughput(pool, tokenizer, prompt: str, settings: EvalSettings) -> dict[str, float]:
    """Generated tokens/s for ``throughput_prompts`` sequences of a fixed length (EOS ignored), prefill included."""
    from hyrl.rollout.batch import Sampling

    ids = [tokenizer(prompt, add_special_tokens=False).input_ids] * settings.throughput_prompts
    sampling = Sampling(max_tokens=settings.max_new_tokens, temperature=1.0, ignore_eos=True, seed=settings.seed)
    pool.generate(ids[:1], sampling)  # warm-up
    t0 = time.perf_counter()
    batch = pool.generate(ids, sampling)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": batch.num_tokens / seconds, "sequences": len(ids), "prompt_tokens": len(ids[0]),
            "new_tokens": settings.max_new_tokens}


def run_eval(checkpoints: list[str | Path], settings: EvalSettings, out_dir: Path, *,
             baseline: str | Path | None = None, progress: bool = True, num_workers: int = 1,
             enforce_eager: bool = False) -> dict[str, Any]:
    """Evaluate each checkpoint (and a dense ``baseline``) and write the results folder; returns results.json."""
    import ray
    from transformers import AutoTokenizer

    from hyrl.eval.checkpoint import check_checkpoint
    from hyrl.eval.report import write_report
    from hyrl.rollout.engine import EngineConfig
    from hyrl.rollout.pool import PoolConfig, RolloutPool, init_ray
    from hyrl.rollout.weights import read_folder

    entries = [(check_checkpoint(c), False) for c in checkpoints]
    if baseline is not None:
        entries.append((check_checkpoint(baseline), True))
    tasks = build_tasks(settings)
    for task in tasks.values():  # bad files / fields fail here, before any engine starts
        split_examples(task, 1, settings.seed, "eval")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = get_task("arithmetic").make(settings.probe_prompts, settings.seed + 1)
    long_prompt = get_task("needle", context_words=max(settings.context_words)).make(1, settings.seed)[0].prompt
    results: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "settings": asdict(settings),
        "engine": {"enforce_eager": enforce_eager, "num_workers": num_workers}, "checkpoints": [],
    }
    init_ray(out_dir, num_cpus=max(2, num_workers))
    pool, pool_arch = None, None
    try:
        with open(out_dir / "samples.jsonl", "w", buffering=1) as samples_file:
            for path, is_baseline in tqdm(entries, desc="checkpoints", disable=not progress):
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                need = settings.max_new_tokens + max(
                    len(tokenizer(p, add_special_tokens=False).input_ids)
                    for p in [long_prompt, *(e.prompt for t in tasks.values()
                                             for e in split_examples(t, settings.num_examples, settings.seed, "eval"))])
                arch = {**_arch(path), "_need": need}
                if pool is not None and arch == pool_arch:  # same architecture: new weights, same engines
                    pool.update_weights(read_folder(path))
                else:
                    if pool is not None:
                        pool.shutdown()
                    engine = EngineConfig(model=str(path), run_dir=str(out_dir), seed=settings.seed,
                                          enforce_eager=enforce_eager, max_model_len=-(-need // 128) * 128)
                    pool, pool_arch = RolloutPool(engine, PoolConfig(num_workers=num_workers)), arch
                entry, rows = _measure(pool, path, tokenizer, tasks, settings, probe, long_prompt, progress)
                entry["baseline"] = is_baseline
                samples_file.writelines(json.dumps({"checkpoint": entry["name"], **row}) + "\n" for row in rows)
                results["checkpoints"].append(entry)
                _write_json(out_dir / "results.json", {**results, "complete": False})  # a crash keeps these
                if progress:
                    tqdm.write(_one_line(entry))
    finally:
        if pool is not None:
            pool.shutdown()
        ray.shutdown()
    _write_json(out_dir / "results.json", {**results, "complete": True})
    write_report(results, out_dir)
    return results


def _measure(pool, path: Path, tokenizer, tasks: dict[str, Task], settings: EvalSettings, probe: list,
             long_prompt: str, progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One checkpoint already loaded in ``pool``: tasks, then mismatch, throughput and cache memory."""
    from hyrl.eval.fidelity import cache_memory, probe_mismatch
    from hyrl.eval.generate import EngineGenerator

    entry: dict[str, Any] = {"path": str(path), "name": _name(path)}
    t0 = time.perf_counter()
    entry["tasks"], rows = evaluate_tasks(EngineGenerator(pool, tokenizer), tasks, settings, progress=progress)
    learner = _load_learner(path)
    if settings.probe_prompts:
        entry["fidelity"] = probe_mismatch(pool, learner, tokenizer, [e.prompt for e in probe],
                                           max_tokens=settings.max_new_tokens, seed=settings.seed)
    if settings.throughput_prompts:
        entry["throughput"] = _throughput(pool, tokenizer, long_prompt, settings)
    if settings.memory_lengths:
        entry["memory"] = cache_memory(learner, settings.memory_lengths)
    entry["seconds"] = time.perf_counter() - t0
    return entry, rows


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _name(path: Path) -> str:
    """A short label: the last two path parts (``sft_tiny/final``)."""
    return "/".join(path.parts[-2:])


def _one_line(entry: dict[str, Any]) -> str:
    accs = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in entry["tasks"].items())
    extra = f"; mismatch KL {entry['fidelity']['kl_mean']:.2e}" if "fidelity" in entry else ""
    return f"hyrl eval: {entry['name']}: {accs}{extra}"
