"""Recipes: every shipped recipe validates, and broken ones fail before anything starts, naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hyrl.config import Recipe, RecipeError, apply_overrides, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_folder_is_not_empty() -> None:
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path, paths=False)  # paths may name an earlier run's output, checked at train time
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem, "a recipe's name should match its file name (it names the run folder)"


BROKEN = {
    "unknown_key": ({"optim": {"lr": 1e-3, "learning_rate": 1e-3}}, "optim.learning_rate: unknown key"),
    "wrong_type": ({"algo": {"type": "dpo", "beta": "high"}}, "algo.beta: expected a number, got 'high'"),
    "missing_model_path": ({"model": {"path": "no/such/model"}}, "model.path: no such folder"),
    "negative_lr": ({"optim": {"lr": -0.001}}, "optim.lr: must be > 0"),
    "unknown_algo": ({"algo": {"type": "ppo"}}, "algo.type: unknown algo type 'ppo'"),
}


def _write(tmp_path: Path, name: str, patch: dict) -> Path:
    raw = {"name": name, "algo": {"type": "sft"}, "logging": {"run_dir": str(tmp_path / "run")}}
    raw.update(patch)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_rejects_broken_recipe(tmp_path: Path, case: str) -> None:
    patch, expected = BROKEN[case]
    path = _write(tmp_path, case, patch)
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "(fix:" in proc.stderr or "expected" in proc.stderr or "must be" in proc.stderr
    assert not (tmp_path / "run").exists(), "a rejected recipe must not create its run folder"


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "many", {"optim": {"lr": -1, "batch_size": "big"}, "extra": 1})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "optim.lr" in text and "optim.batch_size" in text and "extra: unknown key" in text


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, "ov", {})
    recipe = load_recipe(path, ["optim.lr=5e-4", "optim.max_steps=7", "algo.max_length=16"])
    assert recipe.optim.lr == 5e-4 and recipe.optim.max_steps == 7 and recipe.algo.max_length == 16
    with pytest.raises(RecipeError, match=r"optim\.max_steps: expected an integer"):
        load_recipe(path, ["optim.max_steps=many"])
    with pytest.raises(RecipeError, match=r"key\.path=value"):
        apply_overrides({}, ["novalue"])


def test_validate_cli_accepts_a_good_recipe(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "validate", str(ROOT / "recipes/sft_tiny.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["validate", "--help"]])
def test_help(command: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", *command], capture_output=True, text=True)
    assert proc.returncode == 0 and "recipe" in proc.stdout.lower()


# Shipped recipes that start from another shipped recipe's result: the field, and the recipe that produces it.
NEEDS_A_RUN = {
    "dpo_tiny": ("model.path", "sft_tiny"),
    "distill_offline_tiny": ("algo.teacher.path", "teacher_tiny"),
    "distill_logit_kd_tiny": ("algo.teacher.path", "teacher_tiny"),
    "distill_on_policy_tiny": ("algo.teacher.path", "teacher_tiny"),
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_runs_on_a_fresh_clone_or_names_its_producer(path: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/ folder: a fresh clone
    if path.stem not in NEEDS_A_RUN:
        load_recipe(path)
        return
    field, producer = NEEDS_A_RUN[path.stem]
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.problems == [f"{field}: runs/{producer}/final does not exist; produce it with: hyrl train "
                                  f"{ROOT / 'recipes' / producer}.yaml"]
    (tmp_path / "runs" / producer / "final").mkdir(parents=True)
    (tmp_path / "runs" / producer / "final" / "config.json").write_text("{}")
    assert load_recipe(path).name == path.stem  # once the producer has run


def test_validate_cli_names_the_command_that_makes_a_missing_folder(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "validate", str(ROOT / "recipes/dpo_tiny.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.path: runs/sft_tiny/final does not exist; produce it with: hyrl train " in proc.stderr
    assert "recipes/sft_tiny.yaml" in proc.stderr
