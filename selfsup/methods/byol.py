"""BYOL: Bootstrap Your Own Latent, a new approach to self-supervised learning.

Grill, Strub, Altché, Tallec, Richemond, et al., 2020. https://arxiv.org/abs/2006.07733

An online network (backbone, projector, predictor) learns to predict, from one view of an image,
the projection that a target network gives for another view (§3.1). The target is not trained:
it is an exponential moving average of the online backbone and projector, with a momentum that
rises from tau_base to 1 along a half cosine (§3.2). There are no negatives: the predictor and
the slowly moving target are what keep the representation from collapsing.

The two views are asymmetric in the paper (table 6: blur always on the first, rarely on the
second, solarize only on the second); a recipe draws them as `views` (n_views 1) plus one
`extra_views` entry, and the method receives them in that order.

Multi-process training: the loss is per image and needs no communication across ranks; only the
BatchNorm statistics span the global batch (the trainer's SyncBatchNorm on GPUs). The target's
parameters follow the online ones, which DDP keeps equal, so they stay equal on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.parts.heads import mlp
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Output, Progress


@dataclass
class BYOLConfig:
    """name: registry key. proj_hidden / proj_dim: the projector g, Linear-BN-ReLU-Linear with
    4096 hidden units and 256 outputs (§3.3). pred_hidden: hidden width of the predictor q, which
    has the same shape on proj_dim inputs (null: proj_hidden, as in the paper where both are 4096).
    tau_base: the target momentum at the first step, raised to 1 at the last (0.996 in the paper
    for ImageNet, §3.3; solo-learn's CIFAR recipe uses 0.99, which the CIFAR recipes keep)."""

    name: str = "byol"
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: Optional[int] = None
    tau_base: float = 0.996

    tiny = ("method.proj_hidden=32", "method.proj_dim=16")

    def __post_init__(self):
        for field in ("proj_hidden", "proj_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")
        if self.pred_hidden is not None and self.pred_hidden < 1:
            raise ValueError(f"method.pred_hidden must be at least 1 (or null), got {self.pred_hidden}")
        if not 0.0 <= self.tau_base <= 1.0:
            raise ValueError(f"method.tau_base must lie in [0, 1], got {self.tau_base}")


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Normalised squared error of §3.1 (eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z).

    p: [B, D] online predictions of one view; z: [B, D] target projections of the other view
    (the caller stops their gradient). Returns [B], one loss per image, in [0, 4].
    """
    cos = F.cosine_similarity(p.float(), z.float(), dim=-1, eps=1e-12)  # [B]
    return 2.0 - 2.0 * cos


class BYOL(nn.Module):
    config_class = BYOLConfig

    def __init__(self, cfg: BYOLConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # Linear-BN-ReLU-Linear heads (§3.3); `mlp` leaves out the bias before a BN, which the BN
        # would cancel anyway.
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, 2)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden or cfg.proj_hidden, cfg.proj_dim, 2)
        # The target starts as a copy of the online weights (the official code draws it from
        # another seed and reports no difference) and has no predictor (§3.1). Its momentum tau
        # rises from tau_base after the first step to exactly 1 after the last (§3.2, tau = 1 -
        # (1 - tau_base)(cos(pi k/K) + 1)/2, with k counted so that the run's last update uses 1).
        self.target = EMATeacher(backbone, self.projector, momentum=cfg.tau_base, momentum_end=1.0)

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(
                f"BYOL takes exactly 2 views, got {len(views)}: use views.n_views=1 with one "
                "extra_views entry (the asymmetric pair), or views.n_views=2 and no extra_views")
        # Each view goes through the networks on its own, as in the official code: BatchNorm
        # statistics are per view, and views of different sizes are fine.
        h = [self.projector(self.backbone(v)) for v in views]  # online projections, 2 x [B, D]
        p = [self.predictor(x) for x in h]  # online predictions, 2 x [B, D]
        with torch.no_grad():
            z = [self.target(v) for v in views]  # target projections, 2 x [B, D]
        # Symmetrised (eq. 3): view 1 predicts the target of view 2 and vice versa; each direction
        # is averaged over the batch and the two are summed.
        loss = byol_loss(p[0], z[1]).mean() + byol_loss(p[1], z[0]).mean()
        with torch.no_grad():
            cos = 1.0 - 0.25 * loss.detach()  # mean cosine of prediction and target
            # Collapse monitor: per-dimension std of the normalised online projections, times
            # sqrt(D); about 1 when they spread over the sphere, 0 when every image maps to one point.
            zo = F.normalize(h[0].detach().float(), dim=1)
            proj_std = zo.std(dim=0).mean() * zo.shape[1] ** 0.5
        return Output(loss, {"cos": cos, "proj_std": proj_std, "tau": self.target.momentum(progress)})

    def on_step_end(self, progress: Progress, state: dict[str, torch.Tensor]) -> None:
        self.target.update(progress)
