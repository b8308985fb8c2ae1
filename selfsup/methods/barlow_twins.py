"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar, Jing, Misra, LeCun, Deny, 2021. https://arxiv.org/abs/2103.03230

Two views of every image go through the same backbone and projector; each view's embeddings are
standardised over the batch (an affine-free BatchNorm), and the cross-correlation matrix between
the two views' embeddings, dimension by dimension, is pulled towards the identity (§2, eq. 1):
the diagonal to 1 (invariance to the augmentations), the off-diagonal to 0 with weight lambda
(redundancy reduction: each dimension carries information the others do not). No negatives, no
predictor, no momentum encoder, no stop-gradient. Details follow the official code
(facebookresearch/barlowtwins, main.py): a projector of bias-free linears with BN and ReLU between
them, each view through backbone and projector on its own, the normalisation with the batch
statistics of each view, C = bn(z1)^T bn(z2) / global batch, lambda = 0.0051.

Multi-process training: as in the official code, each process computes its images' share of C
(divided by the global batch) and the shares are summed over processes (an all-reduce), so every
process holds the C of the global batch and the same loss; the BatchNorms span the global batch
through the trainer's SyncBatchNorm on GPUs (the official code converts the model too). The
official all-reduce is invisible to autograd, so with DDP averaging the gradients over W processes
its gradient is 1/W of the one-process gradient of the whole batch; here the all-reduce's backward
sums the gradients too, so W processes take the step one process would take with the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from selfsup.distributed import is_distributed, world_size
from selfsup.parts.heads import mlp
from selfsup.protocol import Output, Progress


@dataclass
class BarlowTwinsConfig:
    """name: registry key. proj_hidden / proj_dim / proj_layers: the projector, (Linear-BN-ReLU) x
    (proj_layers - 1) then Linear, all linears bias-free (8192-8192-8192 in the paper, §3 and
    main.py's `--projector`; solo-learn's CIFAR recipe uses 2048-2048-2048). lambd: weight of the
    off-diagonal terms (0.0051, main.py's default and solo-learn's). scale_loss: a factor on the
    whole loss (1: the official code has none; solo-learn's CIFAR recipe, scripts/pretrain/cifar/
    barlow.yaml, uses 0.1, its default 0.024 from an early version of the official code)."""

    name: str = "barlow_twins"
    proj_hidden: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    lambd: float = 0.0051
    scale_loss: float = 1.0

    tiny = ("method.proj_hidden=32", "method.proj_dim=16")

    def __post_init__(self):
        for field in ("proj_hidden", "proj_dim", "proj_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")
        if self.lambd < 0:
            raise ValueError(f"method.lambd must be >= 0, got {self.lambd}")
        if self.scale_loss <= 0:
            raise ValueError(f"method.scale_loss must be positive, got {self.scale_loss}")


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is an all-reduce (sum) of the gradients: every process's
    loss depends on every process's share, and DDP then averages the parameter gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: Tensor) -> Tensor:
    """`x` summed over every process, gradients included (one process: `x` itself)."""
    return _SumOverRanks.apply(x) if is_distributed() else x


def cross_correlation(z1: Tensor, z2: Tensor, batch: int) -> Tensor:
    """This process's share of the cross-correlation matrix C of eq. 2, in float32.

    z1, z2: [B, D] the two views' embeddings, already standardised over the global batch (each
    dimension has mean 0 and variance 1); batch: the global batch, W x B on W processes.
    Returns [D, D], sum_b z1[b, i] z2[b, j] / batch: summed over processes, C of the global batch.
    """
    # Out of autocast, which would run the product in bf16: the loss is the small distance of
    # C's diagonal to 1 and of its off-diagonal to 0.
    with torch.autocast(z1.device.type, enabled=False):
        return z1.float().T @ z2.float() / batch


def barlow_twins_loss(c: Tensor, lambd: float) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 1: sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2.

    c: [D, D] the cross-correlation matrix of the global batch. Returns (loss, invariance term
    sum_i (1 - C_ii)^2, redundancy term sum_{i != j} C_ij^2), each a 0-dim tensor.
    """
    diag = torch.diagonal(c)  # [D]
    on_diag = (1.0 - diag).pow(2).sum()
    off_diag = (c - torch.diag_embed(diag)).pow(2).sum()  # the diagonal subtracted exactly
    return on_diag + lambd * off_diag, on_diag, off_diag


class BarlowTwins(nn.Module):
    config_class = BarlowTwinsConfig

    def __init__(self, cfg: BarlowTwinsConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # The official projector's linears are all bias-free and its output goes through the
        # separate affine-free `self.bn`: `mlp` with last_bn is that same sequence, and the BN
        # in it sees one view at a time as `self.bn` does.
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, last_bn=True)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"Barlow Twins takes exactly 2 views, got {len(views)}: use "
                             "views.n_views=2, or views.n_views=1 with one extra_views entry")
        # Each view on its own, as in the official code: BatchNorm statistics (those of the
        # standardised embeddings included) are per view.
        z1, z2 = (self.projector(self.backbone(v)) for v in views)  # 2 x [B, D], standardised
        c = sum_over_ranks(cross_correlation(z1, z2, z1.shape[0] * world_size()))  # [D, D]
        loss, on_diag, off_diag = barlow_twins_loss(c, self.cfg.lambd)
        return Output(self.cfg.scale_loss * loss,
                      {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()})
