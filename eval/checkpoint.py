"""Check a checkpoint folder before any engine starts, so a bad path fails in a second with the reason."""

from __future__ import annotations

import json
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that cannot be evaluated; the message starts with its path."""


def check_checkpoint(path: str | Path) -> Path:
    """The folder as an absolute path, or ``CheckpointError`` naming the path and what is wrong with it.

    Checks: the folder exists; ``config.json`` parses and names a ``model_type``; the weight files the folder
    declares exist and their safetensors headers read and fit in the files (a truncated download fails here);
    a tokenizer is present.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint folder")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a folder (a checkpoint is a Hugging Face model folder)")
    config = p / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{p}: no config.json (fix: point at <run_dir>/final or a checkpoints/checkpoint-N)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{p}: config.json is corrupt ({e})") from e
    if not model_type:
        raise CheckpointError(f"{p}: config.json has no model_type")
    for f in _weight_files(p):
        _check_safetensors(p, f)
    if not any((p / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise CheckpointError(f"{p}: no tokenizer files (fix: save the tokenizer next to the model)")
    return p.resolve()


def _weight_files(p: Path) -> list[Path]:
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{p}: model.safetensors.index.json is corrupt ({e})") from e
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise CheckpointError(f"{p}: weight shard(s) missing: {', '.join(missing)}")
        return [p / s for s in shards]
    if (p / "model.safetensors").is_file():
        return [p / "model.safetensors"]
    raise CheckpointError(f"{p}: no model.safetensors (or index) in the folder")


def _check_safetensors(p: Path, f: Path) -> None:
    """Header readable, and the largest tensor end offset within the file (catches truncation)."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in {size} bytes")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: {f.name} is corrupt ({e})") from e
    if 8 + n + end > size:
        raise CheckpointError(f"{p}: {f.name} is truncated ({size} bytes, tensors need {8 + n + end})")
