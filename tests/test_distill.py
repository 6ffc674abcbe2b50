"""Distillation: each mode improves the tiny hybrid student from its start; teachers are ranked reproducibly; a
teacher with another tokenizer is refused for token-level modes, with the way out named."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from hyrl.config import RecipeError, load_recipe
from hyrl.rl.teacher import TeacherError, check_same_tokenizer, server_answers, topk_forward_kl

ROOT = Path(__file__).resolve().parents[1]


# --- fast ----------------------------------------------------------------------------------------------------------

def test_topk_forward_kl_is_the_kl_on_the_teachers_support() -> None:
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(2, 5, 11), torch.randn(2, 5, 11, requires_grad=True)
    mask = torch.ones(2, 5)
    full_t = torch.log_softmax(t_logits, -1)
    lp, ids = full_t.topk(11, -1)  # k = vocabulary: exactly KL(q || p)
    expected = (full_t.exp() * (full_t - torch.log_softmax(s_logits, -1))).sum(-1).mean()
    torch.testing.assert_close(topk_forward_kl(s_logits, lp, ids, mask), expected)
    same = topk_forward_kl(t_logits, *full_t.topk(3, -1), mask)
    assert same.item() > 0  # the student's mass outside the top 3 still counts against it
    lp3, ids3 = full_t.topk(3, -1)
    loss = topk_forward_kl(s_logits, lp3, ids3, mask)
    loss.backward()
    g = s_logits.grad.gather(-1, ids3[..., :1])
    assert (g < 0).float().mean() > 0.9, "descent must raise the student's logit of the teacher's top token"


def test_different_tokenizer_is_refused_for_token_level_modes(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from hyrl.cli import main
    from hyrl.model.presets import build_tiny_model

    other = build_tiny_model(tmp_path / "other-tok", vocab_size=300)  # the default saturates at 352
    with pytest.raises(TeacherError) as e:
        check_same_tokenizer(tiny_model_dir, other, "on_policy")
    msg = str(e.value)
    assert str(tiny_model_dir) in msg and str(other) in msg and "mode: offline" in msg
    check_same_tokenizer(tiny_model_dir, tiny_model_dir, "logit_kd")  # same tokenizer: fine
    for mode in ("logit_kd", "on_policy"):
        rc = main(["train", str(ROOT / "recipes" / f"distill_{mode}_tiny.yaml"), f"algo.teacher.path={other}",
                   f"model.path={tiny_model_dir}", f"logging.run_dir={tmp_path / mode}", "logging.progress=false"])
        err = capsys.readouterr().err
        assert rc == 2 and f"mode {mode}" in err and str(other) in err and "offline" in err


def test_teacher_config_errors_name_the_field(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "distill_logit_kd_tiny.yaml"
    with pytest.raises(RecipeError, match="only works with mode: offline"):
        load_recipe(recipe, ["algo.teacher.path=null", "algo.teacher.server=http://localhost:1/v1"], paths=False)
    with pytest.raises(RecipeError, match=r"exactly one of teacher\.path"):
        load_recipe(recipe, ["algo.teacher.server=http://localhost:1/v1"], paths=False)
    missing = r"algo\.teacher\.path \(from the override algo\.teacher\.path=.*\): no such folder"
    with pytest.raises(RecipeError, match=missing):
        load_recipe(recipe, [f"algo.teacher.path={tmp_path / 'missing'}"])


class _Completions(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/completions endpoint that answers sums (the protocol, not a model, is under test)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = [str(sum(map(int, p.rstrip("=").split("+")))) for p in body["prompt"]]  # prompts are "a+b="
        out = json.dumps({"choices": [{"index": i, "text": t} for i, t in reversed(list(enumerate(texts)))]})
        self.send_response(200 if self.path == "/v1/completions" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass


def test_server_teacher_answers_in_order_and_fails_clearly() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Completions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        assert server_answers(url, "m", ["1+2=", "40+2=", "7+0="], max_tokens=4, temperature=0.0) == ["3", "42", "7"]
    finally:
        server.shutdown()
    with pytest.raises(TeacherError, match=r"did not answer /completions.*vllm serve"):
        server_answers(url, None, ["1+1="], max_tokens=2, temperature=0.0, timeout_s=5)


# --- each mode from its tiny recipe (slow) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, train) -> dict[str, Path]:
    """Two dense teachers SFT-trained on 1-digit addition: strong (300 steps) and weak (30 steps)."""
    root = tmp_path_factory.mktemp("teachers")
    train("teacher_tiny.yaml", root / "strong")
    train("teacher_tiny.yaml", root / "weak", "optim.max_steps=30")
    return {"strong": root / "strong" / "final", "weak": root / "weak" / "final"}


def _accuracy(model_dir: Path) -> float:
    from transformers import AutoTokenizer

    from hyrl.eval.greedy import greedy_accuracy
    from hyrl.model.loading import load_causal_lm
    from hyrl.tasks import get_task, split_examples

    task = get_task("arithmetic", max_digits=1)
    return greedy_accuracy(load_causal_lm(model_dir), AutoTokenizer.from_pretrained(model_dir), task,
                           split_examples(task, 64, 10_000, "eval"), 4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "logit_kd"])
def test_offline_and_logit_kd_improve_the_student(mode: str, teachers: dict[str, Path], tmp_path: Path,
                                                  train) -> None:
    run = tmp_path / mode
    train(f"distill_{mode}_tiny.yaml", run, f"algo.teacher.path={teachers['strong']}", "optim.max_steps=120",
          "rollout.enforce_eager=true")
    before, after = _accuracy(run / "init"), _accuracy(run / "final")
    # held-out 1-digit sums are never training sums (hash split): the student must generalise from the others,
    # so the gain is smaller than when held-out prompts were also trained on (0.0 -> 0.19 for logit_kd here)
    assert after >= before + 0.1, f"{mode}: held-out accuracy {before:.3f} -> {after:.3f}"
    if mode == "offline":
        rows = [json.loads(line) for line in (run / "teacher_answers.jsonl").read_text().splitlines()]
        assert len(rows) == 512 and sum(r["score"] for r in rows) / 512 > 0.9  # the strong teacher's answers
    else:
        kl = [r["distill/topk_kl"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "distill/topk_kl" in r]
        assert kl[-1] < 0.5 * kl[0], kl


@pytest.fixture(scope="module")
def hybrid_teacher(sft_run: Path, tmp_path_factory: pytest.TempPathFactory, train) -> Path:
    """teacher_hybrid_tiny: the session's SFT model trained 400 more steps with the lr annealed (~0.9 held-out)."""
    run = tmp_path_factory.mktemp("hybrid_teacher") / "teacher"
    train("teacher_hybrid_tiny.yaml", run, f"model.path={sft_run / 'final'}")
    return run / "final"


@pytest.mark.slow
def test_on_policy_improves_the_student_over_seeds(sft_run: Path, hybrid_teacher: Path, tmp_path: Path,
                                                   train_together) -> None:
    """The recipe from the SFT model, three seeds: the reverse KL it minimises falls, rollout and learner agree, and
    held-out greedy accuracy rises on the mean. Measured (docs/learning.md, section 7) from a 0.414 student with a
    0.93 teacher: +0.19 / +0.20 / +0.18 for seeds 0 / 1 / 2 in 40 steps, the KL halved. The bound is well under
    that and above the project's +0.05, so a CPU that rounds differently does not flip it, while a student that
    does not learn from its teacher fails."""
    runs = {tmp_path / f"seed{seed}": [f"seed={seed}", f"model.path={sft_run / 'final'}",
                                       f"algo.teacher.path={hybrid_teacher}"] for seed in (0, 1, 2)}
    train_together("distill_on_policy_tiny.yaml", runs)
    gains = []
    for run_dir in runs:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        kl = [r["distill/reverse_kl"] for r in records if "distill/reverse_kl" in r]
        assert len(kl) == 40 and sum(kl[-10:]) < sum(kl[:10]), kl
        acc = [r["eval/arithmetic/accuracy"] for r in records if "eval/arithmetic/accuracy" in r]
        gains.append(acc[-1] - acc[0])
        assert all(r["mismatch/max_abs_delta"] < 1e-3 for r in records if "mismatch/max_abs_delta" in r)
    assert sum(gains) / len(gains) >= 0.08, f"held-out accuracy gains per seed: {gains}"


@pytest.mark.slow
def test_teacher_ranking_is_reproducible(teachers: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    from hyrl.rl.rank_teachers import RankSettings, rank_teachers

    settings = RankSettings(student=tiny_model_dir, teachers=[teachers["weak"], teachers["strong"]],
                            prompts="arithmetic", task_options={"max_digits": 1}, steps=30, num_train=256,
                            num_eval=32)
    first = rank_teachers(settings, tmp_path / "a")
    second = rank_teachers(settings, tmp_path / "b")
    assert first == second, "same seed, same teachers: same measurements and ranking"
    by_name = {Path(r["teacher"]).parent.name: r for r in first}
    assert by_name["strong"]["teacher_accuracy"] > by_name["weak"]["teacher_accuracy"]
    assert all(r["mode"] == "logit_kd" and r["kl_before"] > 0 for r in first)
    assert [r["rank"] for r in first] == [1, 2] and first[0]["gain"] >= first[1]["gain"]
    table = (tmp_path / "a" / "ranking.md").read_text()
    assert "strong/final" in table and "weak/final" in table
    assert (tmp_path / "a" / "ranking.png").stat().st_size > 1000
