"""Sinkhorn-Knopp codes over the global batch: SwAV's online equipartitioned assignment (Caron et
al. 2020, §3.1 "Online clustering", eq. 3; `distributed_sinkhorn` in the official
facebookresearch/swav main_swav.py).

The codes Q (K prototypes x B samples) solve max Tr(Q^T C^T Z) + eps H(Q) over the transportation
polytope whose rows sum to 1/K and whose columns sum to 1/B: every prototype is used equally
often over the batch. The solution is diag(u) exp(scores / eps) diag(v), approached by a few
alternating row and column normalisations. Under DDP the batch is every rank's: the row sums (a
prototype's mass over the batch) and the matrix's total are summed across ranks, the column
normalisation is per sample and stays local, so each rank gets its own samples' columns of the
codes of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from selfsup.distributed import is_distributed

Reduce = Callable[[Tensor, str], Tensor]


def all_reduce(x: Tensor, op: str) -> Tensor:
    """`x` reduced over every rank with `op` ("sum" or "max"); `x` itself on one process."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3,
             reduce: Optional[Reduce] = None) -> Tensor:
    """Soft codes of this rank's samples, as columns of the global batch's transport plan.

    scores: [B, K] this rank's prototype scores (cosine similarities: unit projections against
        unit prototypes), any dtype; computed in float64, returned in float32.
    epsilon: the entropy weight (0.05, SwAV's default): smaller gives sharper codes.
    iterations: row-then-column normalisation rounds (3, SwAV's default).
    reduce: `(tensor, "sum" | "max") -> tensor` across ranks; default `all_reduce` (identity on
        one process). Tests pass a simulated one.
    Returns codes [B, K]: each row is a distribution over prototypes (sums to 1), and over the
    global batch each prototype's codes sum to about B_global / K (exactly, as iterations grow).
    """
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and iterations >= 1, got {epsilon}, {iterations}")
    reduce = reduce or all_reduce
    # float64 (Apple's MPS has none): with cosine scores less their maximum, exp(s / eps) reaches
    # down to e^(-2 / eps), below float32's range once eps < 0.023, and a prototype or a sample
    # whose entries all underflow to 0 would give 0 / 0.
    dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    logits = scores.to(dtype) / epsilon  # [B, K]
    # Subtracting the global maximum (so nothing overflows) rescales the whole matrix by one
    # constant, as does the official code's first step (dividing by the matrix's global sum): the
    # first row normalisation removes either exactly, so the one replaces the other.
    q = torch.exp(logits - reduce(logits.max(), "max")).T  # [K, B], the paper's orientation
    k = q.shape[0]
    for _ in range(iterations):
        q /= reduce(q.sum(dim=1, keepdim=True), "sum")  # [K, 1]: each prototype's global mass ...
        q /= k  # ... is 1/K
        # Each sample's mass is 1 / B_global; the final rescaling by B_global makes it 1, so the
        # official code's division by B_global is folded in (it cancels exactly).
        q /= q.sum(dim=0, keepdim=True)  # [1, B]
    return q.T.float()  # [B, K], rows sum to 1
