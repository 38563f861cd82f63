"""Process-group set-up for torchrun: one process per device, gloo on CPU, NCCL on CUDA."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return env


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast(env: DistEnv, value):
    """rank 0's value on every rank."""
    if not env.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(env: DistEnv, value) -> list | None:
    """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
    if not env.enabled:
        return [value]
    box = [None] * env.world_size if env.is_main else None
    dist.gather_object(value, box, dst=0)
    return box


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another process went away (gloo reports it as a plain
    RuntimeError, NCCL as a DistBackendError)."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ("Connection reset by peer", "Connection closed by peer"))


def all_sum(env: DistEnv, value: float, device) -> float:
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
