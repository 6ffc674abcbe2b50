"""Teachers for distillation: tokenizer compatibility, answers (rollout workers or an OpenAI-compatible server),
and top-k next-token log-probs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase


class TeacherError(ValueError):
    """A teacher that cannot be used as configured; the message says why and what to do instead."""


def _describe(tok: PreTrainedTokenizerBase, where: str | Path) -> str:
    return f"{where} ({type(tok).__name__}, {len(tok)} tokens)"


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Same vocabulary (token -> id) and the same EOS: token-level distributions can be compared."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def check_same_tokenizer(student_dir: str | Path, teacher_dir: str | Path, mode: str) -> None:
    """Token-level modes compare distributions over the same vocabulary: refuse a teacher whose tokenizer differs."""
    s, t = AutoTokenizer.from_pretrained(str(student_dir)), AutoTokenizer.from_pretrained(str(teacher_dir))
    if not same_tokenizer(s, t):
        raise TeacherError(
            f"algo.teacher: mode {mode} scores the student's tokens with the teacher, so both need one tokenizer; "
            f"student tokenizer {_describe(s, student_dir)} differs from teacher tokenizer {_describe(t, teacher_dir)}"
            " (fix: algo.mode: offline, which trains the student on the teacher's text)"
        )


def server_answers(base_url: str, model: str | None, prompts: list[str], *, max_tokens: int,
                   temperature: float, timeout_s: float = 120.0) -> list[str]:
    """Completions from an OpenAI-compatible ``/completions`` endpoint (vLLM, SGLang, llama.cpp servers), in order."""
    body = {"prompt": prompts, "max_tokens": max_tokens, "temperature": temperature, "n": 1}
    if model:
        body["model"] = model
    req = urllib.request.Request(base_url.rstrip("/") + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            choices = json.loads(r.read())["choices"]
    except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as e:
        raise TeacherError(f"algo.teacher.server: {base_url} did not answer /completions ({e}) (fix: start the "
                           "server, e.g. `vllm serve MODEL`, and check the URL ends in /v1)") from e
    if len(choices) != len(prompts):
        raise TeacherError(f"algo.teacher.server: {len(choices)} completions for {len(prompts)} prompts")
    return [c["text"] for c in sorted(choices, key=lambda c: c.get("index", 0))]


@torch.no_grad()
def topk_logprobs(teacher: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely next tokens at every position: (log-probs, ids), each [B, T, k], fp32."""
    logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    values, ids = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
    return values, ids


def topk_forward_kl(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of sum_k q_k (log q_k - log p_student(k)): forward KL on the teacher's top-k,
    with q the teacher's top-k probabilities renormalised to sum to one. ``mask`` is [B, T] (1 = scored)."""
    log_q = torch.log_softmax(teacher_logp, dim=-1)
    logp = torch.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher_ids)
    per_pos = (log_q.exp() * (log_q - logp)).sum(-1)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)
