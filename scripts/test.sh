#!/usr/bin/env bash
# Lint and run the whole test suite (slow end-to-end tests included) on CPU. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
.venv/bin/ruff check .
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, where `kernels/` would shadow
# Hugging Face's `kernels` package.
.venv/bin/pytest --durations=15 "$@"
