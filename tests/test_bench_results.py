"""bench/results.py (JSON records appended per topic) and bench/gdn.py's table-to-records conversion, on the CPU."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))  # as when a bench script runs: its folder first on sys.path
    monkeypatch.setenv("HYRL_COMMIT", "abc123")
    return importlib.import_module("results"), importlib.import_module("gdn")


def test_append_records_keeps_history(bench_modules, tmp_path: Path) -> None:
    results, _ = bench_modules
    info = results.run_info("Some GPU", command="python3 bench/x.py")
    assert info["commit"] == "abc123" and info["date"].endswith("Z")
    rec = {"name": "m", "value": 1.5, "unit": "x", **info}
    path = results.append_records("topic", [rec], directory=tmp_path)
    results.append_records("topic", [rec | {"value": 2.0}], directory=tmp_path)
    assert [r["value"] for r in json.loads(path.read_text())] == [1.5, 2.0]
    with pytest.raises(ValueError, match="lacks"):
        results.append_records("topic", [{"name": "m", "value": 1.0}], directory=tmp_path)


def test_gdn_rows_to_records(bench_modules) -> None:
    results, gdn = bench_modules
    info = results.run_info("Some GPU", command="python3 bench/gdn.py")
    train = {"kind": "train", "K": 96, "V": 192, "B": 8, "T": 4096, "fwd_ms": 2.0, "bwd_ms": 4.0,
             "fla_fwd_ms": 3.0, "fla_bwd_ms": 6.0, "err_vs_fla": 1e-3}  # fmt: skip
    no_fla = {"kind": "train", "K": 128, "V": 128, "B": 8, "T": 4096, "fwd_ms": 2.0, "bwd_ms": 4.0}
    decode = {"kind": "decode", "K": 96, "V": 192, "B": 64, "ms": 0.1, "tbps": 2.7, "floor_frac": 0.9}
    recs = gdn.to_records([train, no_fla, decode], 3.0, info)
    by_name = {r["name"]: r for r in recs}
    names = ["gdn_fwd_x_fla", "gdn_bwd_x_fla", "gdn_fwd_bwd_x_fla", "gdn_decode_copy_bw_frac"]  # no FLA: no x rows
    assert [r["name"] for r in recs] == names
    assert by_name["gdn_fwd_bwd_x_fla"]["value"] == pytest.approx(1.5)
    assert (by_name["gdn_fwd_bwd_x_fla"]["ours_ms"], by_name["gdn_fwd_bwd_x_fla"]["fla_ms"]) == (6.0, 9.0)
    assert by_name["gdn_decode_copy_bw_frac"]["batch"] == 64 and by_name["gdn_decode_copy_bw_frac"]["fla_ms"] is None
    for r in recs:
        assert all(k in r for k in results.REQUIRED) and r["device"] == "Some GPU" and r["commit"] == "abc123"
