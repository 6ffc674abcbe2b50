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
    with pytest.raises(RecipeError, match=r"optim\.max_steps \(from the override optim\.max_steps=many\): expected"):
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
    "dpo_tiny": [("model.path", "sft_tiny")],
    "teacher_hybrid_tiny": [("model.path", "sft_tiny")],
    "distill_offline_tiny": [("algo.teacher.path", "teacher_tiny")],
    "distill_logit_kd_tiny": [("algo.teacher.path", "teacher_tiny")],
    "distill_on_policy_tiny": [("model.path", "sft_tiny"), ("algo.teacher.path", "teacher_hybrid_tiny")],
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_runs_on_a_fresh_clone_or_names_its_producer(path: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/ folder: a fresh clone
    if path.stem not in NEEDS_A_RUN:
        load_recipe(path)
        return
    needs = NEEDS_A_RUN[path.stem]
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.problems == [f"{field}: runs/{producer}/final does not exist; produce it with: hyrl train "
                                  f"{ROOT / 'recipes' / producer}.yaml" for field, producer in needs]
    for _, producer in needs:
        _checkpoint_folder(tmp_path / "runs" / producer / "final", tensor_bytes=64)
    assert load_recipe(path).name == path.stem  # once the producers have run


def test_validate_cli_names_the_command_that_makes_a_missing_folder(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hyrl.cli", "validate", str(ROOT / "recipes/dpo_tiny.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.path: runs/sft_tiny/final does not exist; produce it with: hyrl train " in proc.stderr
    assert "recipes/sft_tiny.yaml" in proc.stderr


# --- loading: every failure names the file (and line) or the override it comes from --------------------------


def _load_text(tmp_path: Path, text: str | bytes) -> str:
    """The RecipeError message of loading ``text`` as a recipe file."""
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return str(err.value)


def test_duplicate_nested_key_names_path_and_both_lines(tmp_path: Path) -> None:
    text = _load_text(tmp_path, "name: a\nalgo:\n  type: sft\noptim:\n  lr: 1.0e-3\n  batch_size: 2\n  lr: 5.0e-4\n")
    assert "r.yaml" in text and "optim.lr: duplicate key (lines 5 and 7" in text


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    assert "name: duplicate key (lines 1 and 3" in _load_text(tmp_path, "name: a\nalgo: {type: sft}\nname: b\n")


def test_non_utf8_recipe_names_the_file(tmp_path: Path) -> None:
    text = _load_text(tmp_path, b"name: \xff\xfe\nalgo: {type: sft}\n")
    assert "r.yaml" in text and "not a UTF-8 text file" in text


def test_binary_recipe_names_the_file(tmp_path: Path) -> None:
    text = _load_text(tmp_path, b"name: a\x00\x01\x02\n")
    assert "r.yaml" in text and "binary file" in text


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    text = _load_text(tmp_path, "name: a\nalgo: {type: sft\noptim: {}\n")
    assert "not valid YAML" in text and str(tmp_path / "r.yaml") in text and "line 3, column" in text
    assert "<unicode string>" not in text


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "ov", {})
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["optim.lr=abc"])
    assert str(err.value).startswith("command line:")
    assert "optim.lr (from the override optim.lr=abc): expected a number, got 'abc'" in str(err.value)
    with pytest.raises(RecipeError, match=r"override 'optim\.lr=\[1': not valid YAML"):
        load_recipe(path, ["optim.lr=[1"])
    with pytest.raises(RecipeError, match=r"override 'name\.x=1': name is not a section"):
        load_recipe(path, ["name.x=1"])


def test_file_error_beside_override_error_keeps_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "both", {"optim": {"batch_size": "big"}})
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["optim.lr=abc"])
    text = str(err.value)
    assert text.startswith(str(path)) and "optim.batch_size: expected an integer" in text
    assert "optim.lr (from the override optim.lr=abc)" in text


def _checkpoint_folder(root: Path, tensor_bytes: int) -> Path:
    """A model folder whose model.safetensors header declares one 64-byte tensor but holds ``tensor_bytes``."""
    import json
    import struct

    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "olmo_hybrid"}))
    (root / "tokenizer.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * tensor_bytes)
    return root


def test_truncated_model_weights_fail_validation(tmp_path: Path) -> None:
    model = _checkpoint_folder(tmp_path / "model", tensor_bytes=10)
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, "trunc", {"model": {"path": str(model)}}))
    assert f"model.path: {model}: model.safetensors is truncated" in str(err.value)


def test_garbage_teacher_weights_fail_validation(tmp_path: Path) -> None:
    teacher = _checkpoint_folder(tmp_path / "teacher", tensor_bytes=64)
    (teacher / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, "garbage", {"algo": {"type": "distill", "teacher": {"path": str(teacher)}}}))
    assert f"algo.teacher.path: {teacher}: model.safetensors is corrupt" in str(err.value)


def test_data_path_directory_is_reported_as_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"data\.path: .* is a directory"):
        load_recipe(_write(tmp_path, "dir", {"data": {"path": str(tmp_path)}}))


def test_validate_prints_resolved_paths_from_the_working_directory(tmp_path: Path, monkeypatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from hyrl.cli import main

    model = _checkpoint_folder(tmp_path / "model", tensor_bytes=64)
    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    path = _write(tmp_path, "rel", {"model": {"path": "model"}, "data": {"path": "data.jsonl"},
                                    "logging": {"run_dir": "runs/rel"}})
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"model.path: {model}" in out and f"data.path: {tmp_path / 'data.jsonl'}" in out
    assert f"logging.run_dir: {tmp_path / 'runs/rel'}" in out
