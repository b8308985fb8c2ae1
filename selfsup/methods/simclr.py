"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen, Kornblith, Norouzi, Hinton, 2020. https://arxiv.org/abs/2002.05709

Two augmented views of every image go through the backbone and a projection MLP; the NT-Xent
loss pulls the two projections of an image together and pushes them away from the other 2N-2
projections in the batch, gathered from every process so that the negatives are the global batch.

More views (views.n_views > 2, or extra_views of other sizes: multi-crop) make every other view
of an image a positive (`losses.multi_view_nt_xent`); with two views it is the paper's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import global_nt_xent
from selfsup.parts.heads import mlp
from selfsup.parts.multicrop import encode_crops
from selfsup.protocol import Output, Progress


@dataclass
class SimCLRConfig:
    """name: registry key. temperature: tau of NT-Xent (0.2 as in solo-learn's CIFAR setting; the
    paper's appendix B.9 sweeps 0.1-1.0). proj_hidden / proj_dim / proj_layers: projection MLP
    (the paper's g(.) is 2 layers with ReLU; SimCLR v2 uses 3 with BN)."""

    name: str = "simclr"
    temperature: float = 0.2
    proj_hidden: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2

    tiny = ("method.proj_hidden=32", "method.proj_dim=16")

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        if self.proj_layers < 1:
            raise ValueError(f"method.proj_layers must be at least 1, got {self.proj_layers}")


class SimCLR(nn.Module):
    config_class = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # Linear-BN-ReLU blocks then a Linear (BN in the head follows the official code).
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers)

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) < 2:
            raise ValueError(f"SimCLR takes at least 2 views, got {len(views)}: set views.n_views=2")
        # One backbone pass per size of view: BN statistics then cover every view of that size
        # in the batch (the paper's 2B images with two views).
        z = self.projector(encode_crops(self.backbone, views)).chunk(len(views))  # V x [B, D]
        loss, acc = global_nt_xent(z, self.cfg.temperature)  # negatives: W*VB - V
        return Output(loss, {"contrast_acc": acc})
