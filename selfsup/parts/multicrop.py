"""Multi-crop: one backbone pass per resolution (Caron et al. 2020, SwAV §3.2; DINO's
MultiCropWrapper in the official utils.py).

Crops of several sizes (2 global, N local) cannot share one batch, and a pass per crop would
give BatchNorm tiny batches; so consecutive crops of one size are concatenated and encoded
together, and the features come back in the crops' order. DINO uses it, and SwAV and iBOT share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def resolution_runs(views: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive views of one spatial size."""
    runs, start = [], 0
    while start < len(views):
        stop = start + 1
        while stop < len(views) and views[stop].shape[-2:] == views[start].shape[-2:]:
            stop += 1
        runs.append((start, stop))
        start = stop
    return runs


def encode_crops(encoder: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> Tensor:
    """views: V batches [B, C, H_v, W_v] -> features [V*B, D] in view order, `encoder` called once
    per run of same-size views (so BatchNorm sees each resolution as one batch)."""
    return torch.cat([encoder(torch.cat(list(views[a:b]))) for a, b in resolution_runs(views)])
