"""Shared test set-up: one thread per process, deterministic seeds, and the GPU skip marker."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """One tiny random-init Olmo Hybrid + tokenizer folder for the whole session (built locally, ~1 s)."""
    from hyrl.model.presets import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), preset="tiny", seed=0)
