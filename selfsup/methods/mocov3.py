"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He, 2021. https://arxiv.org/abs/2104.02057

No queue: the negatives of a query are the keys of the other images in the (global) batch, as in
SimCLR. The base encoder is backbone + projection MLP + prediction MLP; the momentum encoder is a
moving average of backbone + projection MLP (§3, Algorithm 1), its momentum rising from 0.99 to 1
along a half cosine (official code, `--moco-m-cos`). Both views are queries and both are keys:
loss = ctr(q1, k2) + ctr(q2, k1). Works with ResNets and ViTs (§4: for ViTs use temperature 0.2,
a 3-layer projector, BN after the predictor too, and optionally a frozen random patch projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather, rank
from selfsup.parts.heads import mlp
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Output, Progress


@dataclass
class MoCoV3Config:
    """name: registry key. temperature: tau (1.0 for ResNets, 0.2 for ViTs: the official code's
    defaults and ViT configs). momentum / momentum_end: the momentum encoder's EMA momentum, cosine
    from `momentum` at the first step to `momentum_end` at the last (0.99 -> 1, official code; set
    both equal for a constant one). proj_hidden / proj_dim / proj_layers: the projector, Linear-BN-
    ReLU blocks then Linear and an affine-free BN (4096 hidden, 256 out; 2 layers in the official
    MoCo_ResNet, 3 in MoCo_ViT and in the paper's §4 text). pred_hidden: the 2-layer predictor's
    hidden width (null: proj_hidden; 4096 in the paper). pred_last_bn: affine-free BN after the
    predictor's output (official code: false for ResNets, true for ViTs). freeze_patch_embed: ViT
    only, keep the random initial patch projection frozen (§4.2, `--stop-grad-conv1`)."""

    name: str = "mocov3"
    temperature: float = 1.0
    momentum: float = 0.99
    momentum_end: float = 1.0
    proj_hidden: int = 4096
    proj_dim: int = 256
    proj_layers: int = 2
    pred_hidden: Optional[int] = None
    pred_last_bn: bool = False
    freeze_patch_embed: bool = False

    tiny = ("method.proj_hidden=32", "method.proj_dim=16")

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        for field in ("momentum", "momentum_end"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"method.{field} must be in [0, 1], got {getattr(self, field)}")
        for field in ("proj_hidden", "proj_dim", "proj_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")
        if self.pred_hidden is not None and self.pred_hidden < 1:
            raise ValueError(f"method.pred_hidden must be at least 1 or null, got {self.pred_hidden}")


def mocov3_contrastive(q: torch.Tensor, k_all: torch.Tensor, temperature: float, offset: int = 0
                       ) -> torch.Tensor:
    """ctr(q, k) of Algorithm 1: cross-entropy of q.k/T against the key of the same image, times 2T.

    q: [B, D] this process's queries (predictor outputs); k_all: [M, D] keys of every process
    (momentum-encoder outputs of the other view), this process's own at rows offset..offset+B; both
    are normalised here and no gradient flows into k_all. logits: [B, M].
    The factor 2T makes the gradient's scale independent of T (official code).
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k_all.detach().float(), dim=1)
    logits = q @ k.T / temperature  # [B, M]
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(nn.Module):
    config_class = MoCoV3Config

    def __init__(self, cfg: MoCoV3Config, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        if cfg.freeze_patch_embed:
            if not hasattr(backbone, "patch_embed"):
                raise ValueError("method.freeze_patch_embed needs a ViT backbone (one with a patch_embed)")
            backbone.patch_embed.requires_grad_(False)  # outside the optimizer, and the EMA keeps it
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden or cfg.proj_hidden, cfg.proj_dim, 2,
                             last_bn=cfg.pred_last_bn)
        # The momentum encoder: teacher[0] follows the backbone, teacher[1] the projector; the
        # predictor has no copy.
        self.teacher = EMATeacher(backbone, self.projector, momentum=cfg.momentum,
                                  momentum_end=cfg.momentum_end)

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"MoCo v3 takes 2 views, got {len(views)}: set views.n_views=2")
        x1, x2 = views
        # One pass per view, as in the official code: BN statistics are per view.
        q1 = self.predictor(self.projector(self.backbone(x1)))  # [B, D]
        q2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1 = gather(F.normalize(self.teacher(x1).float(), dim=1))  # [W*B, D]
            k2 = gather(F.normalize(self.teacher(x2).float(), dim=1))
        offset = rank() * x1.shape[0]
        t = self.cfg.temperature
        loss = mocov3_contrastive(q1, k2, t, offset) + mocov3_contrastive(q2, k1, t, offset)
        return Output(loss, {"momentum": self.teacher.momentum(progress)})

    def on_step_end(self, progress: Progress, state: dict[str, torch.Tensor]) -> None:
        self.teacher.update(progress)
