"""torch.distributed helpers for runs launched by ``torchrun`` (nccl on GPU, gloo on CPU).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address), so the same command
runs on one CPU, one GPU or many nodes. Rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "average_gradients",
    "broadcast_buffers",
    "init_distributed",
    "shutdown",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``model`` when there is more than one rank (gradients averaged)."""
    if info.world_size == 1:
        return model
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(value: Tensor, info: DistInfo) -> Tensor:
    """Mean of ``value`` over ranks (a copy; identity for one process)."""
    value = value.detach().clone()
    if info.world_size > 1:
        dist.all_reduce(value)
        value /= info.world_size
    return value


def shutdown(finished: bool = False) -> None:
    """Leave the process group. After a run every rank ``finished``, first wait for the others
    (a barrier): a rank that tears down its gloo connections while a peer still works on the
    last step (rank 0 writes the final files) made the peer abort now and then ("terminate
    called without an active exception", SIGABRT). After an error no barrier: a dead peer would
    never arrive."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks in one all-reduce (what DDP does), for
    loops whose models DDP cannot wrap (a GAN's discriminator, called several times a step)."""
    if info.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (e.g. a codebook's EMA statistics) to every rank, as DDP does."""
    if info.world_size == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, 0)
