"""The main job on the tiny recipes, through the real CLI: SFT learns, DPO widens the preference margin, and the
outputs are ordinary HF folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _series(run_dir: Path, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


@pytest.mark.slow
def test_sft_loss_falls(sft_run: Path) -> None:
    loss = _series(sft_run, "loss")
    assert len(loss) >= 10
    assert loss[-1] < 0.4 * loss[0], f"SFT loss went {loss[0]:.3f} -> {loss[-1]:.3f}"
    for name in ("recipe.yaml", "curves.png", "summary.txt", "final/config.json", "final/tokenizer.json"):
        assert (sft_run / name).is_file(), name
    assert list((sft_run / "tb").glob("events.out.tfevents.*")), "TensorBoard events missing"
    in_loop = _series(sft_run, "eval/arithmetic/accuracy")  # at step 0, every 100 steps (the recipe), at the end
    assert len(in_loop) == 5 and (sft_run / "eval" / "step-400" / "results.json").is_file()
    assert in_loop[0] == 0.0 and in_loop[-1] >= 0.3, f"in-loop held-out accuracy {in_loop}"


@pytest.mark.slow
def test_final_checkpoint_reloads_with_transformers(sft_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    from hyrl.model.loading import load_causal_lm

    ids = torch.randint(0, 300, (2, 12))
    theirs = AutoModelForCausalLM.from_pretrained(sft_run / "final").eval()
    ours = load_causal_lm(sft_run / "final").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def dpo_runs(sft_run: Path, train_together) -> list[Path]:
    """dpo_tiny from the SFT recipe's model, seeds 0-2 (the seed draws the on-policy pairs and the data order);
    two at a time (each trains on one core)."""
    runs = {sft_run.parent / f"dpo-seed{seed}": [f"model.path={sft_run / 'final'}", f"seed={seed}"]
            for seed in (0, 1, 2)}
    train_together("dpo_tiny.yaml", runs)
    return list(runs)


@pytest.mark.slow
def test_dpo_improves_held_out_accuracy_over_seeds(dpo_runs: list[Path]) -> None:
    """On-policy DPO (with the chosen answers' NLL, ``algo.sft_weight``) raises the preference margin and held-out
    greedy accuracy on the mean of three seeds. Measured on 2 cores from a 0.414 SFT model: accuracy +0.17 / +0.10 /
    +0.10 (mean +0.12; plain DPO -0.04 / -0.09 / +0.02), margin ~0.01 -> ~0.1 (docs/learning.md, section 7). The
    accuracy bound is the project's goal (+0.05); DPO that unlearns fails it."""
    margin_gains, acc_gains = [], []
    for run_dir in dpo_runs:
        margins = _series(run_dir, "rewards/margins")
        assert len(margins) >= 6
        margin_gains.append(sum(margins[-3:]) / 3 - sum(margins[:3]) / 3)
        acc = _series(run_dir, "eval/arithmetic/accuracy")
        acc_gains.append(acc[-1] - acc[0])
        assert (run_dir / "final" / "config.json").is_file() and (run_dir / "dpo_pairs.jsonl").is_file()
    assert sum(margin_gains) / 3 >= 0.03, f"DPO margin gains per seed: {margin_gains}"
    assert sum(acc_gains) / 3 >= 0.05, f"held-out accuracy gains per seed: {acc_gains}"


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path: Path, train) -> None:
    run_dir = tmp_path / "resume"
    common = ["optim.max_steps=20", "checkpoint.every_n_steps=10", "data.num_train=256", "logging.every_n_steps=2"]
    train("sft_tiny.yaml", run_dir, *common)
    train("sft_tiny.yaml", run_dir, *common[1:], "optim.max_steps=30", "checkpoint.resume=true")
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 30, steps
    assert (run_dir / "checkpoints" / "checkpoint-30" / "hyrl-manifest.json").is_file()
