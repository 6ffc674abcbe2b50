#!/usr/bin/env bash
# The main job on the tiny default recipes: SFT warm start, then DPO from its final model (~2 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1
.venv/bin/hyrl train recipes/sft_tiny.yaml
.venv/bin/hyrl train recipes/dpo_tiny.yaml model.path=runs/sft_tiny/final
echo "Run folders: runs/sft_tiny, runs/dpo_tiny (metrics.jsonl, curves.png, tb/, final/)"
