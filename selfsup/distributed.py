"""torch.distributed helpers: a run started by `torchrun` is DDP; anything else is one process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group that torchrun describes in the environment (no-op otherwise)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return True


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, with gradients flowing back to each rank's
    piece (losses such as NT-Xent need the whole batch as negatives)."""
    if not is_distributed():
        return x
    from torch.distributed._functional_collectives import all_gather_single_autograd

    # Its backward sums every rank's gradient for this rank's piece (a reduce-scatter).
    return all_gather_single_autograd(x, 0, dist.group.WORLD)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, without gradient (queues, centres, shuffles)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def broadcast(x: torch.Tensor) -> torch.Tensor:
    """The main process's `x` on every process; `x` itself on one process. NCCL moves GPU
    tensors only, so `x` travels through this process's GPU there."""
    if not is_distributed():
        return x
    y = x.to(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" else x.clone()
    dist.broadcast(y, src=0)
    return y.to(x.device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
