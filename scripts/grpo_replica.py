"""A plain-torch replica of the tiny GRPO recipe (no vLLM, TRL or Ray): SFT warm start, then GRPO, printing
held-out greedy accuracy over steps as JSON. It isolates learning dynamics from the pipeline (docs/learning.md).

    python scripts/grpo_replica.py '{"ws": {"steps": 400, "lr": 2e-3, "sched": "const"}, "lr": 1e-3, "T": 0.6,
                                    "P": 16, "steps": 60}' out.json

cfg: ws (a model folder, or an SFT warm start {steps, lr, sched: cos|const, slip: carry_slip}), lr, T, P (prompts
per step), G (samples per prompt), steps, warmup, sched, mode (grpo | drgrpo | pos: positive advantages only |
shuffle: advantages shuffled, the control), b2 (Adam's beta2), seed, every (evaluation interval). ws.init: the
random-init folder to start from (default: a fresh `tiny` model built at seed 0 in a temporary folder).
"""
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

torch.set_num_threads(1)
from transformers import AutoTokenizer  # noqa: E402

from hyrl.model.loading import load_causal_lm  # noqa: E402
from hyrl.tasks import get_task, split_examples  # noqa: E402

cfg = json.loads(sys.argv[1])
out_path = sys.argv[2]
seed = cfg.get("seed", 0)
torch.manual_seed(seed)
rnd = random.Random(seed)
ws = cfg["ws"]
if isinstance(ws, str):
    base = ws
elif "init" in ws:
    base = ws["init"]
else:
    import tempfile

    from hyrl.model.presets import build_tiny_model
    base = str(build_tiny_model(Path(tempfile.mkdtemp()) / "init", seed=0))
m = load_causal_lm(base, "hyrl")
tok = AutoTokenizer.from_pretrained(base)
eos, pad = tok.eos_token_id, tok.pad_token_id
clean = get_task("arithmetic")
held = split_examples(clean, 128, 10_000, "eval")
log = {"cfg": cfg, "ws_acc": [], "acc": [], "reward": []}
t0 = time.time()


def dump():
    log["seconds"] = time.time() - t0
    with open(out_path, "w") as f:
        json.dump(log, f)


def enc(s):
    return tok(s, add_special_tokens=False).input_ids


@torch.no_grad()
def sample(prompts, n, T):
    """n completions per prompt (T=0: greedy, n=1); prompts grouped by length so no padding is needed."""
    m.eval()
    out = [None] * len(prompts)
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    for L, idx in groups.items():
        x = torch.tensor([prompts[i] for i in idx for _ in range(n)])
        kw = dict(do_sample=True, temperature=T, top_k=0) if T > 0 else dict(do_sample=False)
        o = m.generate(x, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad, **kw)[:, L:].tolist()
        for j, i in enumerate(idx):
            rows = []
            for row in o[j * n:(j + 1) * n]:
                rows.append(row[: row.index(eos) + 1] if eos in row else row)
            out[i] = rows
    return out


def text(row):
    return tok.decode(row, skip_special_tokens=True)


def greedy_acc():
    outs = sample([enc(e.prompt) for e in held], 1, 0)
    return sum(clean.verify(text(o[0]), e.answer).score for o, e in zip(outs, held)) / len(held)


def seq_logprobs(pairs, T=1.0):
    """Mean per-token log-prob of each completion (right-padded batch: causal, so padding never leaks back)."""
    Lmax = max(len(p) + len(c) for p, c in pairs)
    x = torch.full((len(pairs), Lmax), pad)
    mask = torch.zeros(len(pairs), Lmax - 1)
    for i, (p, c) in enumerate(pairs):
        x[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) - 1: len(p) + len(c) - 1] = 1
    lg = m(input_ids=x).logits[:, :-1].float() / T
    lp = torch.log_softmax(lg, -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    return (lp * mask).sum(1) / mask.sum(1)


def schedule(opt, warm, steps, kind):
    def f(s):
        w = min(1.0, (s + 1) / max(1, warm))
        return w * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) if kind == "cos" else 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


# --- SFT warm start (unless a model folder is given) ---
if not isinstance(ws, str):
    task = get_task("arithmetic", carry_slip=ws.get("slip", 0.0))
    train = split_examples(task, 4096, 0, "train")
    opt = torch.optim.AdamW(m.parameters(), lr=ws["lr"], weight_decay=0.0)
    sch = schedule(opt, 10, ws["steps"], ws.get("sched", "cos"))
    order = list(range(len(train)))
    srnd = random.Random(seed + 1)
    for step in range(1, ws["steps"] + 1):
        if (step - 1) * 32 % len(train) == 0:
            srnd.shuffle(order)
        b = [train[order[(i + (step - 1) * 32) % len(train)]] for i in range(32)]
        m.train()
        pairs = [(enc(e.prompt), [*enc(e.meta.get("demonstration", e.answer)), eos]) for e in b]
        loss = -seq_logprobs(pairs).mean()  # per-sequence mean; TRL averages tokens, close enough here
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sch.step()
        if step % 100 == 0 or step == ws["steps"]:
            log["ws_acc"].append((step, greedy_acc()))
            dump()

# --- GRPO ---
lr, T, P, G, steps = cfg["lr"], cfg["T"], cfg["P"], cfg.get("G", 8), cfg["steps"]
mode = cfg.get("mode", "grpo")
train = split_examples(clean, 4096, 0, "train")
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, cfg.get("b2", 0.999)))
sch = schedule(opt, cfg.get("warmup", 10), steps, cfg.get("sched", "cos"))
log["acc"].append((0, greedy_acc()))
dump()
for step in range(1, steps + 1):
    batch = rnd.sample(train, P)
    outs = sample([enc(e.prompt) for e in batch], G, T)
    R = torch.tensor([[clean.verify(text(r), e.answer).score for r in o] for o, e in zip(outs, batch)])
    A = R - R.mean(1, keepdim=True)
    if mode != "drgrpo":
        A = A / (R.std(1, keepdim=True) + 1e-4)
    if mode == "pos":
        A = A.clamp(min=0)
    A = A.view(-1)
    if mode == "shuffle":
        A = A[torch.randperm(len(A))]
    pairs = [(enc(e.prompt), r) for o, e in zip(outs, batch) for r in o]
    keep = [i for i in range(len(pairs)) if A[i] != 0]
    m.train()
    opt.zero_grad()
    if keep:
        lp = seq_logprobs([pairs[i] for i in keep], T)
        (-(A[keep] * lp).sum() / len(pairs)).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    sch.step()
    log["reward"].append(R.mean().item())
    if step % cfg.get("every", 20) == 0 or step == steps:
        log["acc"].append((step, greedy_acc()))
        dump()
dump()
