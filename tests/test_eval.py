"""hyrl eval: metrics that are right by hand, failures that name their cause, and an end-to-end comparison of a
trained checkpoint with its untrained start on the real rollout engine."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hyrl.eval.checkpoint import CheckpointError, check_checkpoint
from hyrl.eval.metrics import pass_at_k, summarize
from hyrl.tasks import Example, Verdict, get_task

# --- metrics ---------------------------------------------------------------------------------------------------

def test_pass_at_k_hand_computed() -> None:
    # 5 samples, 2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@4 = 1 (only 3 wrong ones)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    m = summarize([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], [[3] * 5, [5] * 5])
    assert m["accuracy"] == pytest.approx(0.2) and m["pass@2"] == pytest.approx(0.35)
    assert m["pass@5"] == pytest.approx(0.5) and m["mean_length"] == pytest.approx(4.0)


def test_pass_at_k_is_the_subset_probability() -> None:
    """pass@k equals the fraction of k-subsets of the n samples that contain a correct one (brute force)."""
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 9)
        correct = [rng.random() < 0.3 for _ in range(n)]
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(correct, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, sum(correct), k) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(3, 4, 1)


# --- tasks -----------------------------------------------------------------------------------------------------

def test_needle_answer_is_stated_once_in_the_haystack() -> None:
    for ex in get_task("needle", context_words=40).make(20, seed=1):
        key = ex.meta["key"]
        assert ex.prompt.count(f"The magic number for {key} is {ex.answer}.") == 1
        assert ex.prompt.count("The magic number for") == 3  # two distractors
        assert len(ex.prompt.split()) >= 40
    short, long = (get_task("needle", context_words=w).make(1, 0)[0] for w in (16, 256))
    assert len(long.prompt) > 8 * len(short.prompt) / 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_file_task_reads_rows_with_template_and_math_verifier(tmp_path: Path, fmt: str) -> None:
    from datasets import Dataset

    rows = [{"question": f"What is {i}/2?", "answer": f"\\frac{{{i}}}{{2}}"} for i in range(1, 9)]
    path = tmp_path / f"halves.{fmt}"
    Dataset.from_list(rows).to_json(path) if fmt == "jsonl" else Dataset.from_list(rows).to_parquet(path)
    task = get_task(str(path), template="Q: {question}\nA: ", verifier="math")
    examples = task.make(5, seed=3)
    assert task.name == "halves" and len(examples) == 5 and examples == task.make(5, seed=3)
    assert all(e.prompt.startswith("Q: What is ") and e.prompt.endswith("\nA: ") for e in examples)
    ex = next(e for e in examples if e.prompt == "Q: What is 1/2?\nA: ")
    assert task.verify("the answer is $0.5$", ex.answer).score == 1.0
    bad = task.verify("the answer is $0.4$", ex.answer)
    assert bad.score == 0.0 and "expected" in bad.reason
    with pytest.raises(ValueError, match="lacks prompt"):
        get_task(str(path)).make(2, seed=0)  # the default template wants a 'prompt' column; the error lists columns


def test_unknown_eval_task_lists_the_available_ones() -> None:
    from hyrl.eval.run import EvalSettings, build_tasks

    with pytest.raises(KeyError, match="available: arithmetic, needle, parity, reversal"):
        build_tasks(EvalSettings(tasks=["arithmetic", "sudoku"]))
    keys = build_tasks(EvalSettings(tasks=["needle", "parity"], context_words=[8, 16]))
    assert list(keys) == ["needle/8", "needle/16", "parity"]


# --- checkpoints -----------------------------------------------------------------------------------------------

def _broken(tiny_model_dir: Path, tmp_path: Path, how: str) -> Path:
    p = tmp_path / how
    shutil.copytree(tiny_model_dir, p)
    if how == "truncated":
        f = p / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "garbage-weights":
        (p / "model.safetensors").write_bytes(b"\x00" * 64)
    elif how == "bad-config":
        (p / "config.json").write_text("{not json")
    elif how == "no-weights":
        (p / "model.safetensors").unlink()
    elif how == "no-tokenizer":
        for f in p.glob("tokenizer*"):
            f.unlink()
    return p


@pytest.mark.parametrize("how, reason", [
    ("truncated", "truncated"), ("garbage-weights", "corrupt"), ("bad-config", "config.json is corrupt"),
    ("no-weights", "no model.safetensors"), ("no-tokenizer", "no tokenizer"),
])
def test_corrupt_checkpoint_is_named_with_its_reason(tiny_model_dir: Path, tmp_path: Path, how: str,
                                                     reason: str) -> None:
    bad = _broken(tiny_model_dir, tmp_path, how)
    with pytest.raises(CheckpointError, match=reason) as e:
        check_checkpoint(bad)
    assert str(e.value).startswith(str(bad))
    assert check_checkpoint(tiny_model_dir) == tiny_model_dir.resolve()


def test_eval_cli_exits_nonzero_on_bad_input(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """Missing or corrupt checkpoint, unknown task: exit 2 with the path/name and the reason, before any engine."""
    from hyrl.cli import main

    missing = tmp_path / "nowhere"
    assert main(["eval", str(tiny_model_dir), str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: no such checkpoint folder" in capsys.readouterr().err
    truncated = _broken(tiny_model_dir, tmp_path, "truncated")
    assert main(["eval", str(truncated), "--out", str(tmp_path / "o")]) == 2
    assert f"{truncated}: model.safetensors is truncated" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--tasks", "arithmetic,sudoku", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sudoku'" in err and "parity" in err
    assert main(["eval", str(tiny_model_dir), "--task-option", "arithmetic.colour=red"]) == 2
    assert "no option colour" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


# --- evaluation on the real engine -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _FragileTask:
    """Arithmetic whose verifier crashes on one particular answer (user code has bugs)."""

    name: str = "fragile"

    def make(self, n: int, seed: int) -> list[Example]:
        return get_task("arithmetic").make(n, seed)

    def verify(self, completion: str, answer: str) -> Verdict:
        from hyrl.tasks import split_examples

        if answer == split_examples(self, 8, 10_000, "eval")[3].answer:  # what evaluate_tasks scores
            raise ZeroDivisionError("bug in user verifier")
        return get_task("arithmetic").verify(completion, answer)

    def wrong_answer(self, example, rng):
        return "x"


def test_crashing_verifier_fails_only_its_sample(vllm_worker) -> None:
    from transformers import AutoTokenizer

    from hyrl.eval.generate import EngineGenerator
    from hyrl.eval.run import EvalSettings, evaluate_tasks

    tok = AutoTokenizer.from_pretrained(vllm_worker.cfg.model)
    settings = EvalSettings(num_examples=8, samples=2, max_new_tokens=4, seed=10_000)
    results, rows = evaluate_tasks(EngineGenerator(vllm_worker, tok), {"fragile": _FragileTask(),
                                                                      "arithmetic": get_task("arithmetic")}, settings)
    crashed = [r for r in rows if r["task"] == "fragile" and "verifier raised ZeroDivisionError" in r["reason"]]
    assert results["fragile"]["verifier_errors"] == len(crashed) == 2  # both samples of that one prompt
    assert all(r["score"] == 0.0 and "bug in user verifier" in r["reason"] for r in crashed)
    assert results["arithmetic"]["num_prompts"] == 8 and "pass@2" in results["arithmetic"]
    assert sum(r["task"] == "fragile" for r in rows) == 16


def test_model_generator_leaves_the_training_rng_alone(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from hyrl.eval.generate import ModelGenerator
    from hyrl.model.loading import load_causal_lm

    gen = ModelGenerator(load_causal_lm(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = gen(["12+3=", "4+4="], n=3, max_tokens=5, temperature=1.0, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = gen(["12+3=", "4+4="], n=3, max_tokens=5, temperature=1.0, seed=1)
    assert a.completions == b.completions and len(a.completions[0]) == 3
    assert all(1 <= n <= 5 for row in a.lengths for n in row)


def test_cache_memory_grows_only_in_attention_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Per sequence, hyrl's hybrid cache grows by exactly the attention layers' keys/values; a dense model of the
    same widths grows in every layer. (Caught the GDN conv state holding a view of the whole prefill.)"""
    from hyrl.eval.fidelity import cache_memory
    from hyrl.model.loading import load_causal_lm
    from hyrl.model.presets import build_tiny_dense_model

    hybrid = load_causal_lm(tiny_model_dir)
    dense = load_causal_lm(build_tiny_dense_model(tmp_path / "dense"))
    c = hybrid.config
    n_attn = c.layer_types.count("full_attention")
    kv_bytes_per_token = n_attn * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    h = cache_memory(hybrid, [64, 320])
    d = cache_memory(dense, [64, 320])
    assert (h[1]["cache_mib"] - h[0]["cache_mib"]) * 2**20 == 256 * kv_bytes_per_token
    assert (d[1]["cache_mib"] - d[0]["cache_mib"]) * 2**20 == 256 * kv_bytes_per_token * c.num_hidden_layers / n_attn
    assert h[1]["cache_mib"] < d[1]["cache_mib"]


# --- hyrl eval end to end --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_compares_trained_with_untrained(sft_run: Path, tmp_path: Path) -> None:
    """``hyrl eval`` on the SFT recipe's start and result (+ a dense baseline and a user JSONL task): the trained
    checkpoint scores higher on its task family; the report, samples and plots are written."""
    from hyrl.model.presets import build_tiny_dense_model

    dense = build_tiny_dense_model(tmp_path / "dense")
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"q": e.prompt, "a": e.answer}) + "\n"
                            for e in get_task("arithmetic").make(24, seed=77)))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "hyrl.cli", "eval", str(sft_run / "init"), str(sft_run / "final"),
           "--baseline", str(dense), "--tasks", f"arithmetic,needle,{data}", "--task-option", "sums.template={q}",
           "--task-option", "sums.answer_field=a", "--samples", "2", "--num-examples", "24", "--max-new-tokens", "6",
           "--context-words", "16,48", "--memory-lengths", "64,256", "--probe-prompts", "8",
           "--throughput-prompts", "4", "--enforce-eager", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    init, final, base = results["checkpoints"]
    assert [e["baseline"] for e in (init, final, base)] == [False, False, True]
    assert final["tasks"]["arithmetic"]["accuracy"] >= init["tasks"]["arithmetic"]["accuracy"] + 0.1
    assert final["tasks"]["sums"]["accuracy"] > init["tasks"]["sums"]["accuracy"]
    assert set(final["tasks"]) == {"arithmetic", "needle/16", "needle/48", "sums"}
    assert final["tasks"]["needle/48"]["prompt_tokens"] > final["tasks"]["needle/16"]["prompt_tokens"]
    for e in (init, final, base):
        assert e["fidelity"]["kl_mean"] < 1e-3 and e["fidelity"]["tokens"] > 0
        assert e["throughput"]["tokens_per_s"] > 0
    assert final["memory"][1]["cache_mib"] < base["memory"][1]["cache_mib"]
    report = (out / "report.md").read_text()
    assert "sft/init" in report and "sft/final" in report and "(baseline)" in report
    for png in ("accuracy.png", "recall.png", "memory.png"):
        assert (out / png).stat().st_size > 1000, png
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 * (24 + 24 + 24 + 24)
