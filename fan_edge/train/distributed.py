"""Single process or ``torchrun`` data parallel, behind one small object.

Under ``torchrun`` (WORLD_SIZE > 1) the process group uses NCCL on GPUs and
gloo on CPUs, and the model is wrapped in DistributedDataParallel; otherwise
everything is a no-op and the model runs as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, first_line


def pick_device(requested: str) -> torch.device:
    """The device ``--device`` names ("auto": a GPU when torch sees one); a one-line ConfigError for one that is
    not there, before any model loads (not a traceback at the first tensor moved, nor a silent CPU run)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {requested!r} is not a device ({first_line(exc, 200)}); expected auto, cpu, cuda or cuda:N") from None
    if device.type == "meta":
        raise ConfigError("--device meta holds no data: train on auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {requested}: torch sees no CUDA GPU here (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {requested}: torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    return device


@dataclass
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, requested_device: str = "auto") -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = pick_device(requested_device)
        if world <= 1:
            return cls(0, 1, device)
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, device)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world <= 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if self.world <= 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
