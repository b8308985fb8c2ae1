"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen, He, 2021 (CVPR). https://arxiv.org/abs/2011.10566

Two views of every image go through the same encoder (backbone + projection MLP); a prediction
MLP on one branch predicts the other branch's projection, whose gradient is stopped, and the loss
is the negative cosine similarity, symmetrised over the two views (§3, eqs. 1-4; Algorithm 1).
BYOL without the momentum encoder: the stop-gradient alone keeps the representation from
collapsing (§4.1), and there are no negatives. Details follow the official code
(facebookresearch/simsiam, simsiam/builder.py and main_simsiam.py): a 3-layer projector of
bias-free linears with BN and ReLU, whose output goes through an affine-free BN (the output
linear's bias is frozen there: a BN follows it); a 2-layer bottleneck predictor (2048 -> 512 ->
2048, Linear-BN-ReLU-Linear); both as §3 "Baseline settings" describes them. Each view goes
through the encoder on its own; loss = -(cos(p1, z2) + cos(p2, z1)) / 2 with z detached.

The official `--fix-pred-lr` keeps the predictor at the initial learning rate while the rest of
the network follows the cosine decay (§4.2, Table 1: 68.1 % against 67.7 % with decay; solo-learn
does it too, `static_lr`). The trainer has no per-parameter schedule (a method's parameter sets
each have their own loss and optimizer, which would mean a second forward pass, and all follow the
trainer's schedule), so here the predictor follows the warm-up and cosine decay like every other
parameter: the paper's variant with decay.

Multi-process training: the loss is per image and needs no communication across ranks; only the
BatchNorm statistics span the global batch (the trainer's SyncBatchNorm on GPUs, as the official
code converts the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.parts.heads import mlp
from selfsup.protocol import Output, Progress


@dataclass
class SimSiamConfig:
    """name: registry key. proj_hidden / proj_dim / proj_layers: the projector, (Linear-BN-ReLU) x
    (proj_layers - 1), then Linear and an affine-free BN (2048 / 2048 / 3 in the official code,
    where the hidden width is the ResNet-50's 2048 features; solo-learn's CIFAR recipe keeps 2048
    on a ResNet-18). pred_hidden: the predictor's bottleneck width (512, the official `--pred-dim`;
    its output is proj_dim wide)."""

    name: str = "simsiam"
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_hidden: int = 512

    tiny = ("method.proj_hidden=32", "method.proj_dim=16", "method.pred_hidden=8")

    def __post_init__(self):
        for field in ("proj_hidden", "proj_dim", "proj_layers", "pred_hidden"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, stopgrad(z)) of eqs. 1 and 3: the negative cosine similarity, in float32, with z's
    gradient stopped here (§3: without it the model collapses, §4.1).

    p: [B, D] predictions of one view; z: [B, D] projections of the other view. Returns [B], one
    value per image, in [-1, 1].
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1)


class SimSiam(nn.Module):
    config_class = SimSiamConfig

    def __init__(self, cfg: SimSiamConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # The official projector's output linear has a frozen bias followed by the affine-free
        # BN, which cancels any bias: `mlp`'s last_bn leaves the bias out altogether.
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, 2)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"SimSiam takes exactly 2 views, got {len(views)}: use views.n_views=2, "
                             "or views.n_views=1 with one extra_views entry")
        # Each view on its own, as in the official code: BatchNorm statistics are per view.
        z = [self.projector(self.backbone(v)) for v in views]  # projections, 2 x [B, D]
        p = [self.predictor(x) for x in z]  # predictions, 2 x [B, D]
        # Symmetrised (eq. 2): each view's prediction against the other's stopped projection.
        loss = 0.5 * negative_cosine(p[0], z[1]).mean() + 0.5 * negative_cosine(p[1], z[0]).mean()
        with torch.no_grad():
            # Collapse monitor (§4.1, Fig. 2): per-dimension std of the normalised projections,
            # times sqrt(D): about 1 when they spread over the sphere, 0 at collapse.
            zn = F.normalize(z[0].detach().float(), dim=1)
            proj_std = zn.std(dim=0).mean() * zn.shape[1] ** 0.5
        return Output(loss, {"cos": -loss.detach(), "proj_std": proj_std})
