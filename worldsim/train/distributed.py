"""Multi-process training under ``torchrun``: DistributedDataParallel, gloo on CPU, NCCL on CUDA.

The same command runs single-process when ``WORLD_SIZE`` is unset or 1. Every rank builds the
same seeded batch and keeps its own shard (``batch[rank::world]``), so data sharding needs no
sampler state and resume stays exact; rank 0 alone writes files. With ``device=cuda`` each
rank trains on ``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from worldsim.core.errors import WorldsimError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, training on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch along dim 0: rows ``rank, rank + world, ...``."""
        return batch[self.rank :: self.world]


def train_device(name: str) -> torch.device:
    """The device this process trains on, refused with a clear message when this machine has none such.
    A bare ``cuda`` means ``cuda:<LOCAL_RANK>`` (0 outside torchrun)."""
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise WorldsimError(f"device={name!r} is not a device name; use cpu, cuda or cuda:<index>") from e
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise WorldsimError(f"device={name!r}: training runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise WorldsimError(f"device={name!r} asked, but torch {torch.__version__} sees no CUDA GPU; use device=cpu")
    if dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.index >= torch.cuda.device_count():
        raise WorldsimError(f"device={dev} asked, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "cpu") -> Dist:
    """The training device, and the process group torchrun set up (if any): NCCL for CUDA, gloo for CPU."""
    dev = train_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        # torch._dynamo, which the first optimizer imports, keeps references to the default group
        # when it is imported after the group exists; the group then outlives
        # destroy_process_group, and gloo's worker threads, still alive at interpreter exit, can
        # free a collective's tensors while Python finalizes: SIGABRT, "terminate called without
        # an active exception" (pytorch/pytorch#179291 describes the crash). Imported first, it
        # holds none, and shutdown() joins those threads while the interpreter is whole.
        import torch._dynamo  # noqa: F401

        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP when there is more than one process; the bare module otherwise."""
    if d.world <= 1:
        return model
    return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def average_gradients(model: torch.nn.Module, d: Dist) -> None:
    """Average every parameter's gradient across ranks in place (what DDP does during backward),
    for stages that call submodules rather than one wrapped module. Every rank must hold
    gradients for the same parameters."""
    if d.world <= 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


def weights_in_sync(model: torch.nn.Module, d: Dist) -> bool:
    """True when every rank holds bit-identical weights (compares a float64 checksum across ranks)."""
    if d.world == 1:
        return True
    total = torch.zeros(1, dtype=torch.float64, device=d.device)
    for i, p in enumerate(model.state_dict().values()):
        total += p.detach().double().flatten().mul(1.0 + (i % 7) * 1e-3).sum()
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo.item() == hi.item())


def barrier(d: Dist) -> None:
    """Wait for every rank (``dist.barrier``); a no-op in a single process."""
    if d.world > 1:
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group if one was initialised, joining its backend's threads (unless
    something else still holds the group: see init_distributed); safe to call always."""
    if dist.is_initialized():
        dist.destroy_process_group()
