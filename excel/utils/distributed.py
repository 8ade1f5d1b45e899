"""torch.distributed helpers: one code path for a single process, CPU (gloo) and GPUs (nccl)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → this rank's GPU when CUDA is available (LOCAL_RANK), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
    return device


def init_distributed(device: torch.device) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); nccl on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (no-op in a single process); returns it on its own device.

    With nccl a CPU tensor travels through the current GPU; otherwise the sum is in place.
    """
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(items: list, this_rank: int | None = None, ranks: int | None = None) -> list:
    """This rank's share of `items` (strided, so every item goes to exactly one rank)."""
    this_rank = rank() if this_rank is None else this_rank
    ranks = world_size() if ranks is None else ranks
    return items[this_rank::ranks]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
