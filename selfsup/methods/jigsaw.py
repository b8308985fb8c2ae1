"""Jigsaw puzzles: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles.

Noroozi, Favaro, 2016. https://arxiv.org/abs/1603.09246

An image is cut into a 3x3 grid of tiles, the tiles are shuffled by one permutation of a fixed
set, and the network names the permutation (§3). Each tile goes through the same encoder (the
context-free network, fig. 3: shared weights up to fc6, so no tile sees another before the
fc6 outputs are concatenated); the tile features are concatenated in the shuffled order and a
classifier (fc7, fc8) gives one logit per permutation of the set.

Shortcuts closed as in §3.3, each a setting here: every tile is cropped at a random place inside
its cell (64 of 75 px), so that tiles do not line up edge to edge; every tile is normalised to zero
mean and unit std per channel, so that tiles cannot be matched by low-level statistics; each
colour channel of each tile is shifted by its own random 0-2 px, against chromatic aberration
(the paper also turns 30 % of the images grey: `views.gray_p` in the recipes).

The permutation set (§3.2, Algorithm 1) is chosen greedily for a large minimum Hamming distance
and is fixed by `perm_seed`; it is a buffer of the module, so it is saved in every checkpoint and
a loaded run uses the set it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import cross_entropy_accuracy
from selfsup.parts.puzzle import PuzzleConfig, PuzzleHead, cut_puzzle, draw_permutations
from selfsup.protocol import Output, Progress
from selfsup.views.pretext import normalize_tiles, permutation_set, permute_tiles


@dataclass
class JigsawConfig(PuzzleConfig):
    """name: registry key. The puzzle settings (grid, tile, gap, jitter, channel_shift, normalize,
    n_perms, perm_seed, tile_dim, head_hidden, head_layers) are `parts.puzzle.PuzzleConfig`'s."""

    name: str = "jigsaw"

    # Tiles of 5-7 px from 24 px views: under 5 px the ResNet's last stride-2 conv sees a 1x1 map,
    # whose bf16 weight gradient oneDNN does not compute deterministically (no exact resume).
    tiny = ("views.n_views=1", "views.size=24", "method.n_perms=24", "method.tile_dim=16",
            "method.head_hidden=32")


class Jigsaw(nn.Module):
    config_class = JigsawConfig

    def __init__(self, cfg: JigsawConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # A buffer: saved with every checkpoint, and loading a checkpoint restores the set the
        # run was trained with.
        self.register_buffer("permutations", permutation_set(cfg.n_perms, cfg.grid ** 2, cfg.perm_seed))
        self.head = PuzzleHead(backbone.dim, cfg)

    @torch.no_grad()
    def prepare(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A view batch [B, C, S, S] -> shuffled tiles [B * T, C, t, t] (image-major, slot order)
        and each image's permutation index [B]."""
        if len(views) != 1:
            raise ValueError(f"Jigsaw takes 1 view, got {len(views)}: set views.n_views=1")
        x = views[0]
        tiles = cut_puzzle(x, self.cfg, generator)  # [B, T, C, t, t]
        if self.cfg.normalize:
            tiles = normalize_tiles(tiles)
        idx, perms = draw_permutations(x.shape[0], self.permutations, generator, x.device)
        return [permute_tiles(tiles, perms).flatten(0, 1), idx]

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"Jigsaw takes (tiles, indices) from its prepare(); got {len(views)} tensors")
        tiles, idx = views
        h = self.backbone(tiles)  # [B * T, D]: one pass through the shared tile encoder
        _, logits = self.head(h.view(idx.shape[0], -1, h.shape[-1]))  # [B, P]
        loss, acc = cross_entropy_accuracy(logits, idx)  # over the permutation set
        return Output(loss, {"perm_acc": acc})
