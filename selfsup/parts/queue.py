"""A first-in-first-out queue of features: MoCo's dictionary of negatives (He et al. 2019, §3.2).

The queue is a buffer, so it is saved in checkpoints and resumes exactly. Under DDP every rank
pushes the keys of the whole global batch, gathered, so all ranks hold the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather


class FeatureQueue(nn.Module):
    """size: entries kept; dim: feature width. Starts with random unit vectors, as MoCo does."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))  # [K, D]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue this step's keys [B, D] from every rank, overwriting the oldest entries.

        The write wraps around the end, so the queue size need not divide the batch size."""
        keys = gather(keys.detach()).to(self.features.dtype)  # [W*B, D]
        size = len(self)
        if keys.shape[0] > size:  # a batch larger than the queue keeps its newest keys
            keys = keys[-size:]
        idx = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.features[idx] = keys
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)
