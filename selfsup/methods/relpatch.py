"""Relative patch position: Unsupervised Visual Representation Learning by Context Prediction.

Doersch, Gupta, Efros, 2015. https://arxiv.org/abs/1505.05192

A 3x3 grid of patches is cut from each image; given the centre patch and one of its 8 neighbours,
the network classifies where the neighbour lies (fig. 2). Both patches go through the same
encoder (a siamese network, §3.1, fig. 3); their features are concatenated and a small classifier
gives 8 logits.

The task is easy to solve by cheating, and §3 "Avoiding trivial solutions" closes three
shortcuts, each a setting here:
- a gap between patches (half a patch in the paper: 48 px between 96-px patches), so that edges
  and textures running across a border cannot be continued;
- a random jitter of each patch's position (up to 7 px), so that lines cannot be extrapolated;
- chromatic aberration (lenses shift green against magenta towards the image's edges, which
  tells the network where a patch came from): "drop" keeps one random colour channel of each
  patch and replaces the others by faint Gaussian noise, "project" removes the green-magenta
  component of every pixel; the paper found them about equally good.

Differences, each for a reason: every image gives `pairs_per_image` of its 8 neighbours (all 8 by
default) instead of one pair per sample, so that the 9 encoded patches of an image serve 8
labelled pairs; the centre is encoded once. The defences work on the view-normalised pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup.losses import cross_entropy_accuracy
from selfsup.parts.heads import mlp
from selfsup.protocol import Output, Progress
from selfsup.views.pretext import (check_grid, cut_tiles, drop_colours, grid_positions,
                                   neighbour_pairs, project_green_magenta)

ABERRATION = ("drop", "project", "none")


@dataclass
class RelPatchConfig:
    """name: registry key.
    tile / gap / jitter: patch side, pixels between neighbouring cells, and the largest random
        shift of each patch along each axis. null: the paper's proportions scaled to the view
        (96-px patches, 48-px gaps and 7-px jitter in a region of 4.15 patch sides), e.g. 11 / 6 /
        1 for 48-px views and 3 / 2 / 0 for 16-px views.
    aberration: the chromatic-aberration defence, drop | project | none (§3; the paper shows
        colour dropping in its figures and found projection about as good).
    noise: std of the Gaussian noise that replaces the dropped channels, as a share of the kept
        channel's std ("~1/100" in §3).
    pairs_per_image: how many of the 8 neighbours each image contributes (ours: 8, one pair per
        sample in the paper).
    head_hidden / head_layers: the classifier on the two concatenated patch features, as the
        paper's fc7-fc8 on concatenated fc6 outputs (fig. 3); 2 layers of 512 are ours.
    """

    name: str = "relpatch"
    tile: Optional[int] = None
    gap: Optional[int] = None
    jitter: Optional[int] = None
    aberration: str = "drop"
    noise: float = 0.01
    pairs_per_image: int = 8
    head_hidden: int = 512
    head_layers: int = 2

    tiny = ("views.n_views=1", "views.size=24", "method.head_hidden=32")

    def __post_init__(self):
        if self.aberration not in ABERRATION:
            raise ValueError(f"method.aberration must be one of {ABERRATION}, got {self.aberration!r}")
        for field, low in (("tile", 1), ("gap", 0), ("jitter", 0)):
            value = getattr(self, field)
            if value is not None and value < low:
                raise ValueError(f"method.{field} must be at least {low} (or null), got {value}")
        if not 1 <= self.pairs_per_image <= 8:
            raise ValueError(f"method.pairs_per_image must lie in 1..8, got {self.pairs_per_image}")
        if self.noise < 0:
            raise ValueError(f"method.noise must be >= 0, got {self.noise}")
        if self.head_layers < 1 or self.head_hidden < 1:
            raise ValueError("method.head_layers and method.head_hidden must be at least 1")

    def geometry(self, size: int) -> tuple[int, int, int]:
        """(tile, gap, jitter) for `size`-px views, filling the unset ones from the paper's
        proportions, and checked to fit."""
        tile = self.tile if self.tile is not None else max(1, int(size * 96 / 398))
        gap = self.gap if self.gap is not None else max(1, round(tile / 2))
        jitter = self.jitter if self.jitter is not None else round(tile * 7 / 96)
        check_grid(size, 3, tile, gap, jitter, "method")
        return tile, gap, jitter


class RelPatch(nn.Module):
    config_class = RelPatchConfig

    def __init__(self, cfg: RelPatchConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = mlp(2 * backbone.dim, cfg.head_hidden, 8, cfg.head_layers)

    @torch.no_grad()
    def prepare(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A view batch [B, C, S, S] -> patches [B * (1 + K), C, t, t] (each image's centre, then
        its K neighbours) and labels [B * K]; K = pairs_per_image."""
        if len(views) != 1:
            raise ValueError(f"RelPatch takes 1 view, got {len(views)}: set views.n_views=1")
        x = views[0]
        b, size = x.shape[0], x.shape[-1]
        tile, gap, jitter = self.cfg.geometry(size)
        pos = grid_positions(b, size, 3, tile, gap, jitter, generator, x.device)  # [B, 9, 2]
        cells, labels = neighbour_pairs(b, self.cfg.pairs_per_image, generator, x.device)
        pos = pos.gather(1, cells[..., None].expand(-1, -1, 2))  # [B, 1 + K, 2]
        patches = cut_tiles(x, pos, tile).flatten(0, 1)  # [B * (1 + K), C, t, t]
        if self.cfg.aberration == "drop":
            patches = drop_colours(patches, generator, self.cfg.noise)
        elif self.cfg.aberration == "project":
            patches = project_green_magenta(patches)
        return [patches.contiguous(), labels.flatten()]

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError("RelPatch takes (patches, labels) from its prepare(); got "
                             f"{len(views)} tensors")
        patches, labels = views
        k = self.cfg.pairs_per_image
        h = self.backbone(patches)  # [B * (1 + K), D]: one pass, the siamese weights are shared
        h = h.view(-1, 1 + k, h.shape[-1])
        centre = h[:, :1].expand(-1, k, -1)
        pairs = torch.cat([centre, h[:, 1:]], dim=-1).flatten(0, 1)  # [B * K, 2D]
        # logits [B * K, 8] over the neighbour positions; labels in 0..7 (row-major, fig. 2)
        loss, acc = cross_entropy_accuracy(self.classifier(pairs), labels)
        return Output(loss, {"pos_acc": acc})
