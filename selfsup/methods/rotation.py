"""Rotation prediction: Unsupervised Representation Learning by Predicting Image Rotations.

Gidaris, Singh, Komodakis, 2018. https://arxiv.org/abs/1803.07728

Every image is rotated by 0, 90, 180 and 270 degrees and the network classifies which rotation it
sees (§2.1). All four rotations of an image go into the same batch (the paper's implementation
details: better than one random rotation per image). Multiples of 90 degrees are exact flips and
transposes, so they leave no interpolation artefacts to read the answer from (§2.2). The
classifier is a small MLP on the backbone's pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import cross_entropy_accuracy
from selfsup.parts.heads import mlp
from selfsup.protocol import Output, Progress
from selfsup.views.pretext import rotations


@dataclass
class RotationConfig:
    """name: registry key. head_hidden / head_layers: the 4-way classifier on the pooled
    backbone features, Linear-BN-ReLU blocks then a Linear (head_layers=1: linear). Two layers of
    512 are ours: a nonlinear head keeps the last backbone layer less specific to rotations, the
    role the paper's extra conv blocks play (its CIFAR-10 table 1: the best features are not the
    last block's)."""

    name: str = "rotation"
    head_hidden: int = 512
    head_layers: int = 2

    tiny = ("views.n_views=1", "method.head_hidden=32")

    def __post_init__(self):
        if self.head_layers < 1:
            raise ValueError(f"method.head_layers must be at least 1, got {self.head_layers}")
        if self.head_hidden < 1:
            raise ValueError(f"method.head_hidden must be at least 1, got {self.head_hidden}")


class Rotation(nn.Module):
    config_class = RotationConfig

    def __init__(self, cfg: RotationConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = mlp(backbone.dim, cfg.head_hidden, 4, cfg.head_layers)

    @torch.no_grad()
    def prepare(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """Each view batch [B, C, H, H] -> its 4 rotations [4B, C, H, H] and their targets [4B]."""
        out = []
        for v in views:
            out.extend(rotations(v))
        return out

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) % 2:
            raise ValueError("Rotation takes (images, targets) pairs from its prepare(); got "
                             f"{len(views)} tensors")
        images, targets = torch.cat(views[0::2]), torch.cat(views[1::2])
        # logits [4B, 4]; targets [4B] in 0..3 (k quarter turns counter-clockwise)
        loss, acc = cross_entropy_accuracy(self.classifier(self.backbone(images)), targets)
        return Output(loss, {"rot_acc": acc})
