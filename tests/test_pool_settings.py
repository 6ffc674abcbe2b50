"""Every rollout pool a run builds gets every engine setting of its recipe (``hyrl.rollout.pool.build_pool``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyrl.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]

OVERRIDES = ["model.state_dtype=bfloat16", "model.dtype=bfloat16", "rollout.max_num_seqs=7",
             "rollout.max_num_batched_tokens=96", "rollout.max_model_len=384", "rollout.enforce_eager=true",
             "rollout.num_workers=3", "rollout.num_cpus_per_worker=0.5", "rollout.gpu_memory_utilization=0.3",
             "rollout.chunk_size=5", "rollout.request_timeout_s=12", "learner.sync_bucket_mib=8", "seed=11",
             "rollout.implementation=vllm"]


def _expect(engine, pool) -> None:
    assert (engine.state_dtype, engine.dtype, engine.max_num_seqs, engine.max_num_batched_tokens) == (
        "bfloat16", "bfloat16", 7, 96)
    assert (engine.max_model_len, engine.enforce_eager, engine.gpu_memory_utilization, engine.seed) == (
        384, True, 0.3, 11)
    assert engine.implementation == "vllm"
    assert (pool.num_workers, pool.num_cpus_per_worker, pool.chunk_size, pool.request_timeout_s, pool.bucket_mib) == (
        3, 0.5, 5, 12, 8)


def test_engine_and_pool_config_carry_every_recipe_setting(tmp_path: Path) -> None:
    from hyrl.rollout.pool import engine_config, pool_config

    recipe = load_recipe(ROOT / "recipes" / "grpo_tiny.yaml", OVERRIDES, paths=False)
    engine = engine_config(recipe, tmp_path, tmp_path / "run", extra={"enable_sleep_mode": True})
    _expect(engine, pool_config(recipe))
    assert engine.model == str(tmp_path.resolve()) and engine.extra == {"enable_sleep_mode": True}


@pytest.mark.parametrize("recipe", ["distill_offline_tiny.yaml"])
def test_distillation_teacher_pool_gets_the_recipe_settings(recipe: str, tmp_path: Path, tiny_model_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline teacher's pool is built from the recipe like GRPO's (before, it got only ``num_workers``, so
    ``model.state_dtype`` and the memory settings never reached it). The pool is stopped before any engine starts:
    what is under test is what it is asked for."""
    import hyrl.rollout.pool as pool_module
    from hyrl.rl.distill import _pool_answers
    from hyrl.rl.run import RunContext

    asked = {}

    class Stop(Exception):
        pass

    def recording_build_pool(r, model_dir, run_dir, **kwargs):
        asked["engine"], asked["pool"] = pool_module.engine_config(r, model_dir, run_dir), pool_module.pool_config(r)
        raise Stop

    monkeypatch.setattr(pool_module, "build_pool", recording_build_pool)
    monkeypatch.setattr(pool_module, "init_ray", lambda *a, **k: None)
    r = load_recipe(ROOT / "recipes" / recipe, [*OVERRIDES, f"algo.teacher.path={tiny_model_dir}"], paths=False)
    with pytest.raises(Stop):
        _pool_answers(RunContext(r, tmp_path, tiny_model_dir), ["1+2="])
    _expect(asked["engine"], asked["pool"])
    assert asked["engine"].model == str(tiny_model_dir.resolve())
