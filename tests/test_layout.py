"""The package layout contract: hyrl's folders import only as ``hyrl.*``, never as top-level modules.

Transformers probes for Hugging Face's ``kernels`` package by that name; a top-level ``kernels`` (or ``model``,
``eval``, ``rl``) on sys.path would shadow it and break model imports in confusing ways.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["kernels", "model", "eval", "rl", "rollout", "tasks"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_no_top_level_module_shadows_hyrl_folders(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None:
        assert not Path(spec.origin).resolve().is_relative_to(ROOT), f"`import {name}` finds hyrl's folder"
    assert str(ROOT) not in [str(Path(p).resolve()) for p in sys.path if p], "repo root is on sys.path"


def test_no_top_level_module_in_a_fresh_interpreter() -> None:
    """Outside pytest too: a user's `python -c` from another folder sees only the hyrl package."""
    code = f"import importlib.util as u, hyrl; print([n for n in {SUBPACKAGES!r} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_import_under_hyrl(name: str) -> None:
    module = importlib.import_module(f"hyrl.{name}")
    assert Path(module.__file__).resolve() == ROOT / name / "__init__.py"


def test_pyproject_lists_every_package() -> None:
    """A non-editable install ships only the packages pyproject names: every folder with code must be listed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"hyrl"} | {
        "hyrl." + ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.rglob("__init__.py")
        if p.parent != ROOT and not any(part.startswith(".") or part in ("tests", "build") for part in p.parts)
    }
    found |= {"hyrl.recipes"}  # data only: listed so setuptools ships the recipes without a warning
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"
