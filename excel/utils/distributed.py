"""torch.distributed helpers: one code path for a single process, CPU (gloo) and GPUs (nccl).

Under torchrun's elastic agent (``--max-restarts``) the ranks of a restarted worker group meet in the
agent's key-value store, which outlives the failed group and still holds its keys: joined under the same
names, a new rank could read the address of a dead peer (gloo: "connectFullMesh ... Connection refused")
or a stale barrier count (a silent wait). :func:`init_distributed` therefore joins every attempt under its
own key prefix. With one agent the attempt number (``TORCHELASTIC_RESTART_COUNT``) is the same on every
rank; with several agents it is not (only the failing node counts a restart), so the launchers
(:mod:`excel.utils.launch`) give multi-node groups a fresh store per attempt instead
(``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), which needs no prefix.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_BACKENDS_IN_MESSAGES = ("gloo", "NCCL")     # errors of a backend's transport name it (not always a DistError)


class PeerLostError(RuntimeError):
    """A collective failed because another rank is gone or did not answer within the timeout."""


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed on a peer (only while a process group is up)."""
    return is_distributed() and (isinstance(err, dist.DistError)
                                 or (isinstance(err, RuntimeError) and any(m in str(err) for m in _BACKENDS_IN_MESSAGES)))


class DeviceError(RuntimeError):
    """The configured device cannot be used by this process."""


def resolve_device(name: str = "auto") -> torch.device:
    """This process's device: ``auto`` → its GPU when CUDA is available, else the CPU; ``cuda`` → its GPU.

    "Its GPU" is ``cuda:LOCAL_RANK`` (torchrun's local rank; 0 in a single process). ``cuda:N`` names one
    GPU and is refused when torchrun starts several processes (they would all share it).
    """
    local = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
    if device.index is None:
        return torch.device("cuda", local)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise DeviceError(f"device={name} would put every process of this {os.environ['WORLD_SIZE']}-process job "
                          "on one GPU; use device=cuda (or auto): each process takes cuda:LOCAL_RANK")
    return device


def restart_count() -> int:
    """How often torchrun's agent of this node has restarted the worker group (0: the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def job_id() -> str | None:
    """The launching job's id (torchrun's ``--rdzv-id``; random with ``--standalone``), None outside torchrun
    or when torchrun was given none."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return value if value and value != "none" else None


def _attempt_store(timeout: timedelta) -> tuple[dist.Store, int, int]:
    """(store, rank, world size) of this process, through torchrun's environment (``env://``: the agent's
    store or one hosted by rank 0); the agent's shared store is prefixed with this attempt's number."""
    store, rank_, size = next(dist.rendezvous("env://", timeout=timeout))
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    if shared and int(os.environ.get("GROUP_WORLD_SIZE", 1)) == 1:
        store = dist.PrefixStore(f"excel/attempt_{restart_count()}", store)
    return store, rank_, size


def init_distributed(device: torch.device, timeout_s: float | None = None) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); nccl on GPUs, gloo on CPUs.

    ``timeout_s`` bounds every collective (and joining): a rank whose peer is gone or stopped gets an
    error after it instead of waiting for the backend's default (30 minutes for gloo).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=timeout_s) if timeout_s else timedelta(minutes=30)
        store, rank_, size = _attempt_store(timeout)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank_,
                                world_size=size, timeout=timeout)


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
    return _all_reduce(tensor, dist.ReduceOp.SUM) if is_distributed() else tensor


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        return tensor.copy_(on_gpu)
    dist.all_reduce(tensor, op=op)
    return tensor


def max_over_ranks(value: int) -> int:
    """The largest of ``value`` over all ranks (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    return int(_all_reduce(torch.tensor([value], dtype=torch.int64), dist.ReduceOp.MAX).item())


def on_main(job: Callable[[], T]) -> T:
    """Run ``job`` on rank 0 only and give every rank its result; an exception it raises is raised on every
    rank (so that no rank waits in a collective for a rank 0 that has stopped)."""
    if not is_distributed():
        return job()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", job())
        except Exception as err:  # handed to every rank, raised there
            box[0] = ("error", err)
    if dist.get_backend() == "nccl":
        dist.broadcast_object_list(box, src=0, device=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)         # with nccl through the GPU set by init_distributed
    return gathered


def shard(items: list, this_rank: int | None = None, ranks: int | None = None) -> list:
    """This rank's share of `items` (strided, so every item goes to exactly one rank)."""
    this_rank = rank() if this_rank is None else this_rank
    ranks = world_size() if ranks is None else ranks
    return items[this_rank::ranks]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def rng_state(device: torch.device | None = None) -> dict[str, object]:
    """This process's torch RNG states: the CPU's and, on a GPU, that of its own ``device`` only (what each
    rank saves for an exact resume; ``cuda`` is None on a CPU)."""
    on_gpu = device is not None and device.type == "cuda"
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if on_gpu else None}


def set_rng_state(state: dict[str, object], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`: the CPU state, and the GPU state into ``device`` when both have one.

    Older checkpoints hold a list of every visible GPU's state; the entry of ``device``'s index is used
    when it exists, else the first.
    """
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device is None or device.type != "cuda" or cuda is None or (isinstance(cuda, list) and not cuda):
        return
    if isinstance(cuda, list):
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda, device)
