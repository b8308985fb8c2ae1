"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen, Kornblith, Norouzi, Hinton, 2020. https://arxiv.org/abs/2002.05709

Two augmented views of every image go through the backbone and a projection MLP; the NT-Xent
loss pulls the two projections of an image together and pushes them away from the other 2N-2
projections in the batch, gathered from every process so that the negatives are the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.heads import mlp
from selfsup.methods.schedules import Progress
from selfsup.train.distributed import gather_with_grad, rank


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

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        if self.proj_layers < 1:
            raise ValueError(f"method.proj_layers must be at least 1, got {self.proj_layers}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            z_all: torch.Tensor | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (the paper's eq. 1), averaged over this process's 2B anchors.

    z1, z2: [B, D] projections of two views of the same B images.
    z_all: [M, D] normalised projections of every process, this one's `cat([z1, z2])` at rows
        offset..offset+2B (None: single process, z_all is this process's own).
    Returns the loss and the share of anchors whose positive has the highest similarity.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
    if z_all is None:
        z_all = z
    logits = z @ z_all.float().T / temperature  # [2B, M]
    rows = torch.arange(2 * b, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # an anchor is not its own negative
    positives = (rows + b) % (2 * b) + offset  # view 1 of image i pairs with view 2 of image i
    loss = F.cross_entropy(logits, positives)
    acc = (logits.argmax(dim=1) == positives).float().mean()
    return loss, acc


class SimCLR(nn.Module):
    config_class = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # Linear-BN-ReLU blocks then a Linear (BN in the head follows the official code).
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers)

    def forward(self, views: list[torch.Tensor], progress: Progress
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}: set views.n_views=2")
        b = views[0].shape[0]
        # One backbone pass over both views: BN statistics then cover the 2B images, as in the paper.
        z = self.projector(self.backbone(torch.cat(views)))  # [2B, D]
        z1, z2 = z[:b], z[b:]
        z_local = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        z_all = gather_with_grad(z_local)  # [W*2B, D]; the same tensor when not distributed
        loss, acc = nt_xent(z1, z2, self.cfg.temperature, z_all, offset=rank() * 2 * b)
        return loss, {"contrast_acc": acc}

    def on_step_end(self, progress: Progress) -> None:
        pass  # SimCLR keeps no per-step state
