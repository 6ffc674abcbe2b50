"""Inference memory per sequence vs context length: the Olmo Hybrid 7B shape against a dense 7B of the same widths.

    python bench/memory.py                          # GPU: 7B shapes (random bf16 weights), contexts 1k..16k
    python bench/memory.py --preset tiny --contexts 128,512,2048     # CPU smoke run

Per context length L, one sequence is prefilled with ``use_cache=True`` (hyrl's model for the hybrid, transformers'
Llama for the dense baseline: every layer attention, same hidden/MLP/heads/layers) and two numbers are read:
cache MiB (the bytes of every tensor the returned cache holds, ``hyrl.eval.fidelity.cache_memory``) and, on CUDA,
the peak MiB allocated during the prefill above the weights. The hybrid's cache is 1 attention layer in 4 plus a
fixed-size GDN state (fp32), so it grows ~4x slower with L; the dense one grows in every layer.
"""

from __future__ import annotations

import argparse
import datetime
import gc

import torch


def build(kind: str, preset: str, dtype: torch.dtype, device: str):
    """A random-init model of the preset's shape: hyrl's hybrid, or a dense Llama of the same widths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyrl.model.loading import new_causal_lm
    from hyrl.model.presets import PRESETS, preset_config

    torch.manual_seed(0)
    if kind == "hybrid":
        cfg = preset_config(preset, vocab_size=PRESETS[preset].get("vocab_size", 512), pad_token_id=0)
        with torch.device(device):
            return new_causal_lm(cfg, "hyrl").to(dtype).eval()
    p = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=p.get("vocab_size", 512), hidden_size=p["hidden_size"],
                      intermediate_size=p["intermediate_size"], num_hidden_layers=p["num_hidden_layers"],
                      num_attention_heads=p["num_attention_heads"], num_key_value_heads=p["num_key_value_heads"],
                      max_position_embeddings=p["max_position_embeddings"])
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype).eval()


def main() -> None:
    from hyrl.eval.fidelity import cache_memory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="olmo-hybrid-7b")
    ap.add_argument("--contexts", default="1024,4096,16384")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    contexts = [int(x) for x in args.contexts.split(",")]
    rows = {}
    for kind in ("hybrid", "dense"):
        model = build(kind, args.preset, dtype, device)
        rows[kind] = cache_memory(model, contexts)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"# {args.preset}, {dtype}, {name}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    peak = device == "cuda"
    print("| context | hybrid cache MiB | dense cache MiB | dense / hybrid |"
          + (" hybrid peak MiB | dense peak MiB |" if peak else ""))
    print("|---|---|---|---|" + ("---|---|" if peak else ""))
    for h, d in zip(rows["hybrid"], rows["dense"]):
        ratio = d["cache_mib"] / h["cache_mib"]
        line = f"| {h['context']} | {h['cache_mib']:.1f} | {d['cache_mib']:.1f} | {ratio:.2f} |"
        if peak:
            line += f" {h['peak_mib']:.0f} | {d['peak_mib']:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
