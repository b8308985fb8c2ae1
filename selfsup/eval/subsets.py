"""Class-stratified, seeded subsets of a labelled set: the one helper behind the linear probe's
held-out slice, fine-tuning on fewer labels and the few-label protocols (N labels per class, 1 %
or 10 % of the labels)."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_subset(y: Tensor, seed: int, *, per_class: int | None = None,
                      fraction: float | None = None, total: int | None = None) -> tuple[Tensor, Tensor]:
    """Seeded (chosen, rest) index tensors of y [N], both sorted, on y's device. Give one of:

    per_class: this many of every class (iGPT's 4 / 25 / 400 labels per class); a class with
        fewer gives all it has.
    fraction: round(fraction * N_c) of each class c (SimCLR's 1 % and 10 %).
    total: `total` items with each class's share kept, floor(total * N_c / N) each and one more
        for the classes with the largest remainders, so a small set is balanced like the full one.

    Within each class the items are taken in the order of one seeded permutation of all N, so a
    larger subset with the same seed contains a smaller one.
    """
    if sum(a is not None for a in (per_class, fraction, total)) != 1:
        raise ValueError("stratified_subset: give exactly one of per_class, fraction and total")
    y_cpu = y.cpu()
    n = y_cpu.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[torch.sort(y_cpu[perm], stable=True).indices]  # grouped by class, shuffled within
    counts = torch.bincount(y_cpu, minlength=int(y_cpu.max()) + 1 if n else 0)
    if per_class is not None:
        if per_class < 0:
            raise ValueError(f"stratified_subset: per_class must be >= 0, got {per_class}")
        quota = counts.clamp(max=per_class)
    elif fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"stratified_subset: fraction must lie in [0, 1], got {fraction}")
        quota = (counts.double() * fraction).round().long()
    else:
        if total < 0:
            raise ValueError(f"stratified_subset: total must be >= 0, got {total}")
        exact = counts.double() * min(total, n) / max(1, n)
        quota = exact.floor().long()
        extra = min(total, n) - int(quota.sum())
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:extra]] += 1
    starts = counts.cumsum(0) - counts
    ys = y_cpu[order]
    chosen = torch.arange(n) - starts[ys] < quota[ys]
    return order[chosen].sort().values.to(y.device), order[~chosen].sort().values.to(y.device)
