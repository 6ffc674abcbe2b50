"""Where a run's actors go: join or start a Ray cluster, and reserve the learner and rollout workers' resources.

One placement group holds a bundle per worker, so a run either gets everything it asked for or waits (and then
fails naming what is missing) instead of starting half its workers:

- ``separate``: learner worker i -> bundle i, rollout worker j -> bundle ``num_learners + j``;
- ``colocate``: learner worker i and rollout worker i share bundle i (one GPU; vLLM sleeps during the learner step).

The strategy (``PACK`` by default) keeps bundles on as few nodes as possible, so the weight broadcast stays on one
node when it can; ``SPREAD`` puts them on as many nodes as possible.
"""

from __future__ import annotations

import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyrl.config import Recipe


class ClusterError(RuntimeError):
    """The Ray cluster cannot hold what the recipe asks for."""


@dataclass
class Placement:
    """The run's placement group and which bundle each learner / rollout worker goes to."""

    group: Any
    learner_bundles: list[int]
    rollout_bundle_offset: int

    def learner_options(self, rank: int) -> dict[str, Any]:
        """Ray actor options that put learner ``rank`` in its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.learner_bundles[rank])}


def bundles(recipe: Recipe) -> list[dict[str, float]]:
    """One resource bundle per worker (``separate``) or per learner/rollout pair (``colocate``)."""
    learner, rollout = recipe.learner, recipe.rollout

    def bundle(cpus: float, gpus: float) -> dict[str, float]:
        return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}

    if recipe.ray.placement == "colocate":
        gpus = learner.num_gpus_per_worker + rollout.num_gpus_per_worker
        return [bundle(learner.num_cpus_per_worker + rollout.num_cpus_per_worker, gpus)] * learner.num_workers
    return ([bundle(learner.num_cpus_per_worker, learner.num_gpus_per_worker)] * learner.num_workers
            + [bundle(rollout.num_cpus_per_worker, rollout.num_gpus_per_worker)] * rollout.num_workers)


def place(recipe: Recipe) -> Placement:
    """Reserve the workers' bundles; raises ``ClusterError`` naming the shortfall if they do not fit in time."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    wanted = bundles(recipe)
    need = {k: sum(b.get(k, 0) for b in wanted) for k in ("CPU", "GPU")}

    group = placement_group(wanted, strategy=recipe.ray.strategy)
    try:
        ray.get(group.ready(), timeout=recipe.ray.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        have = {k: ray.cluster_resources().get(k, 0) for k in ("CPU", "GPU")}
        raise ClusterError(
            f"the Ray cluster could not place {len(wanted)} worker bundles ({recipe.ray.strategy}) within "
            f"{recipe.ray.placement_timeout_s:g} s: they need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, the "
            f"cluster has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs (fix: fewer learner/rollout workers or GPUs "
            "per worker, or a larger cluster in ray.address)") from None
    n = recipe.learner.num_workers
    return Placement(group, list(range(n)), 0 if recipe.ray.placement == "colocate" else n)


def check_local_gpus(recipe: Recipe) -> None:
    """Before any work: a local cluster (no ``ray.address``) has this machine's GPUs, no more."""
    import torch

    need = sum(b.get("GPU", 0) for b in bundles(recipe))
    have = torch.cuda.device_count()
    if recipe.ray.address is None and need > have:
        raise ClusterError(
            f"the recipe's workers need {need:g} GPUs (learner: {recipe.learner.num_workers} x "
            f"{recipe.learner.num_gpus_per_worker:g}, rollout: {recipe.rollout.num_workers} x "
            f"{recipe.rollout.num_gpus_per_worker:g}) and this machine has {have} (fix: run it where the GPUs are, "
            "join a cluster with ray.address, or set learner/rollout.num_gpus_per_worker: 0 for CPU)")


@contextmanager
def cluster(recipe: Recipe, run_dir: Path):
    """Join ``ray.address`` or start a local cluster sized for the workers; shut down (or disconnect) after."""
    import ray

    from hyrl.console import RAY_SETUP_HOOK
    from hyrl.rollout.pool import init_ray

    temp = None
    if recipe.ray.address is not None:
        import os

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=recipe.ray.address, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"worker_process_setup_hook": RAY_SETUP_HOOK})
        print(f"hyrl: Ray worker logs: on the nodes of {recipe.ray.address}, under Ray's temp folder "
              "(default /tmp/ray/session_latest/logs)")
    else:
        need = sum(b["CPU"] for b in bundles(recipe))
        temp = init_ray(run_dir, num_cpus=recipe.ray.num_cpus or max(2, math.ceil(need)),
                        object_store_mib=recipe.ray.object_store_mib)
        gone = "" if temp.is_relative_to(run_dir) else " (a /tmp folder, removed when the run ends)"
        print(f"hyrl: Ray worker logs (learner and rollout output): {temp / 'session_latest' / 'logs'}{gone}")
    try:
        yield
    finally:
        ray.shutdown()
        if temp is not None and not temp.is_relative_to(run_dir):  # a short /tmp folder that run_dir/ray links to
            shutil.rmtree(temp, ignore_errors=True)
            (run_dir / "ray").unlink(missing_ok=True)
