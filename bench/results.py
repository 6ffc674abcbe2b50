"""Benchmark results as JSON records, one file per topic: ``bench/results/<topic>.json`` holds a JSON list of flat
objects, one per measured value, appended to by every run (never rewritten), so the history stays in git.

Each record has ``name``, ``value``, ``unit``, ``device``, ``commit``, ``date`` and ``command`` (``run_info`` fills
the last four), plus whatever describes the case (shapes, raw times). ``commit`` is ``$HYRL_COMMIT`` when set (a
device machine gets the tree without its ``.git``), else ``git rev-parse HEAD`` of this checkout, else "unknown".
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = ("name", "value", "unit", "device", "commit", "date", "command")


def git_commit() -> str:
    if os.environ.get("HYRL_COMMIT"):
        return os.environ["HYRL_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=RESULTS_DIR.parent, capture_output=True, text=True,
                             timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def run_info(device: str, command: str | None = None) -> dict:
    """The fields every record of one run shares: device, commit, date (UTC) and the command that produced it."""
    if command is None:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"device": device, "commit": git_commit(), "date": date, "command": command}


def append_records(topic: str, records: list[dict], directory: Path | None = None) -> Path:
    """Append ``records`` to ``<directory>/<topic>.json`` (a JSON list; created if missing) and return its path."""
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"record {r.get('name')!r} lacks {missing}")
    path = (directory or RESULTS_DIR) / f"{topic}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    if not isinstance(old, list):
        raise ValueError(f"{path} does not hold a JSON list")
    path.write_text(json.dumps(old + list(records), indent=1) + "\n")
    return path
