"""Learner workers: N Ray actors running the same TRL trainer data-parallel, one process group between them.

Each actor joins a ``torch.distributed`` group (gloo on CPU, NCCL on GPUs) before building its trainer, so
accelerate inside TRL sees a multi-process run: the global batch is split across workers and gradients are
all-reduced (DDP), or parameters are sharded (FSDP2, GPUs). Only rank 0 talks to the rollout pool: it gathers every
rank's prompts, samples them in one request and scatters the completions back (``PoolRollout``), and it pushes the
weights (under FSDP2 every rank takes part in gathering each full tensor first).
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch


def free_port() -> tuple[str, int]:
    """This node's IP and a free TCP port on it (rank 0's rendezvous address)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


def join_group(rank: int, world_size: int, addr: str, port: int) -> None:
    """Join the learners' process group as ``rank`` and export what accelerate reads to find it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR=addr, MASTER_PORT=str(port))
    if world_size == 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)  # Ray gives each learner actor its own GPU, visible as device 0
    # Rank 0 alone measures held-out accuracy and runs in-loop evaluation while the others wait in a collective:
    # allow that an hour (NCCL's default is 10 minutes).
    torch.distributed.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                                         world_size=world_size, timeout=datetime.timedelta(hours=1))


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def full_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's full tensors, one at a time; sharded (DTensor) ones are gathered, so every rank must iterate."""
    for name, t in model.state_dict().items():
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        yield name, t.detach()


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Sharded models: the full weights on rank 0's host (every rank takes part in the gathers; others get None).
    Unsharded: None (the model saves itself)."""
    if not is_sharded(model):
        return None
    rank = rank_and_world()[0]
    full = {}
    for name, t in full_named_tensors(model):
        if rank == 0:
            full[name] = t.cpu()
    return full if rank == 0 else None


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(t, "full_tensor") for t in model.state_dict().values())


class LearnerGroup:
    """``num_workers`` learner actors (class ``actor_cls``) placed in their bundles; ``train`` runs them together."""

    def __init__(self, actor_cls: type, args: tuple, *, num_workers: int, num_cpus: float, num_gpus: float,
                 placement=None, env: dict[str, str] | None = None) -> None:
        import ray

        self.actors = []
        for rank in range(num_workers):
            options: dict[str, Any] = dict(num_cpus=num_cpus, num_gpus=num_gpus,
                                           runtime_env={"env_vars": env or {}})
            if placement is not None:
                options.update(placement.learner_options(rank))
            self.actors.append(ray.remote(actor_cls).options(**options).remote(*args))

    def train(self) -> list[dict[str, Any]]:
        """Run every worker's ``train(rank, world, addr, port)``; their summaries, by rank."""
        import ray

        addr, port = ray.get(self.actors[0].rendezvous.remote())
        world = len(self.actors)
        return ray.get([a.train.remote(rank, world, addr, port) for rank, a in enumerate(self.actors)])
