"""Checkpoint integrity: a manifest of every file's size and hash, written last; resume takes the newest checkpoint
that still matches its manifest; rotation never deletes the newest intact one.

A checkpoint folder without a manifest was interrupted mid-save. One whose files no longer match it (flipped bytes,
a truncated file, a missing file) was damaged afterwards. Either way resume skips it, says which and why, and falls
back to the next older intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

MANIFEST = "hyrl-manifest.json"


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[-1])


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """Record every file under ``folder`` (size, blake2b) in its manifest, atomically: the checkpoint is complete
    from the reader's side only once this returns."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "blake2b": _digest(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith((MANIFEST, f".{MANIFEST}"))
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when every file matches its manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no manifest (the save was interrupted)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']} (truncated or overwritten)"
        if _digest(path) != want["blake2b"]:
            return f"{name} does not match its checksum (corrupted on disk)"
    return None


def checkpoint_folders(checkpoint_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest first."""
    folders = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(folders, key=_step, reverse=True)


def newest_intact(checkpoint_dir: Path, report: Callable[[str], None] | None = print) -> Path | None:
    """The newest checkpoint whose files match its manifest; each newer one skipped is reported with the reason."""
    for folder in checkpoint_folders(checkpoint_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if report is not None:
            report(f"hyrl: skipping {folder}: {problem}")
    return None


def rotate(checkpoint_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints, and unfinished folders older than the newest
    complete one. Called after a manifest is written, so the newest complete checkpoint is never among them."""
    folders = checkpoint_folders(checkpoint_dir)
    complete = [p for p in folders if (p / MANIFEST).is_file()]
    if not complete:
        return []
    newest = _step(complete[0])
    doomed = complete[keep_last:] + [p for p in folders if not (p / MANIFEST).is_file() and _step(p) < newest]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
