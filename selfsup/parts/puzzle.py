"""Jigsaw puzzles (Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246), shared by the jigsaw
and damaged-jigsaw methods: their settings, the grid of tiles cut from each view, a permutation
drawn per image from the fixed set, and the context-free network's top.

The tile, gap and jitter defaults follow §3.3 (a 64-px tile at a random place in a 75-px cell),
scaled to the view; the permutation set (§3.2, Algorithm 1) is `views.pretext.permutation_set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup.parts.heads import mlp
from selfsup.views.pretext import check_grid, cut_tiles, draw_channel_shifts, grid_positions


@dataclass
class PuzzleConfig:
    """The puzzle settings that jigsaw and damaged jigsaw share (their configs extend this one).

    grid: tiles per side (3 in the paper).
    tile / gap / jitter: tile side, pixels between neighbouring cells and the largest shift of a
        tile inside its cell. null: the paper's proportions scaled to the view (§3.3: a 64-px tile
        at a random place in a 75-px cell is gap 11, jitter 5), e.g. 14 / 2 / 1 for 48-px views and
        4 / 1 / 0 for 16-px views.
    channel_shift: largest spatial shift of each colour channel of a tile, in px (§3.3: 0-2 px on
        64-px tiles). null: scaled to the tile (2 px per 64, rounded).
    normalize: normalise every tile on its own (§3.3).
    n_perms: size of the permutation set (1000 in the paper, its best setting in table 3).
    perm_seed: seed of the first permutation; the rest of the set follows from it.
    tile_dim: width of each tile's feature after the shared fc6 (1024 in the paper, fig. 3).
    head_hidden / head_layers: the classifier over the concatenated tile features (fc7 with 4096
        units, then fc8, in the paper).
    """

    grid: int = 3
    tile: Optional[int] = None
    gap: Optional[int] = None
    jitter: Optional[int] = None
    channel_shift: Optional[int] = None
    normalize: bool = True
    n_perms: int = 1000
    perm_seed: int = 0
    tile_dim: int = 256
    head_hidden: int = 1024
    head_layers: int = 2

    def __post_init__(self):
        if self.grid < 2:
            raise ValueError(f"method.grid must be at least 2, got {self.grid}")
        for name, low in (("tile", 1), ("gap", 0), ("jitter", 0), ("channel_shift", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"method.{name} must be at least {low} (or null), got {value}")
        for name in ("n_perms", "tile_dim", "head_hidden", "head_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)}")
        total = 1
        for k in range(2, self.grid ** 2 + 1):
            total *= k
        if self.n_perms > total:
            raise ValueError(f"method.n_perms={self.n_perms}: a {self.grid}x{self.grid} grid has "
                             f"only {total} permutations")

    def geometry(self, size: int) -> tuple[int, int, int, int]:
        """(tile, gap, jitter, channel_shift) for `size`-px views, the unset ones scaled from the
        paper's 64-px tiles in 75-px cells, checked to fit."""
        cell = size // self.grid
        tile = self.tile if self.tile is not None else max(1, round(cell * 64 / 75))
        slack = max(0, cell - tile)
        gap = self.gap if self.gap is not None else slack
        jitter = self.jitter if self.jitter is not None else slack // 2
        shift = self.channel_shift if self.channel_shift is not None else round(tile * 2 / 64)
        check_grid(size, self.grid, tile, gap, jitter, "method")
        return tile, gap, jitter, shift


def cut_puzzle(x: torch.Tensor, cfg: PuzzleConfig, g: torch.Generator) -> torch.Tensor:
    """The grid of tiles of every image, in place order: x [B, C, S, S] -> [B, T, C, t, t], each
    tile at a random place in its cell and its channels shifted (when channel_shift > 0)."""
    b, c, size = x.shape[0], x.shape[1], x.shape[-1]
    tile, gap, jitter, shift = cfg.geometry(size)
    t = cfg.grid ** 2
    pos = grid_positions(b, size, cfg.grid, tile, gap, jitter, g, x.device)
    shifts = draw_channel_shifts(b, t, c, shift, g, x.device) if shift > 0 and c > 1 else None
    return cut_tiles(x, pos, tile, shifts)


def draw_permutations(n: int, perms: torch.Tensor, g: torch.Generator, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One permutation of the set per image, uniformly: (indices [n], permutations [n, T])."""
    idx = torch.randint(0, perms.shape[0], (n,), generator=g, device=device)
    return idx, perms.to(device)[idx]


class PuzzleHead(nn.Module):
    """The context-free network's top (fig. 3): a shared fc6 on every tile feature, the T
    outputs concatenated in slot order, then fc7-fc8 to `out` logits.

    tile_features: [B, T, D] -> per-tile [B, T, tile_dim] and logits [B, out]."""

    def __init__(self, dim: int, cfg: PuzzleConfig):
        super().__init__()
        self.fc6 = nn.Sequential(nn.Linear(dim, cfg.tile_dim), nn.ReLU(inplace=True))
        self.top = mlp(cfg.grid ** 2 * cfg.tile_dim, cfg.head_hidden, cfg.n_perms, cfg.head_layers)

    def forward(self, tile_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc6(tile_features)  # [B, T, tile_dim]
        return h, self.top(h.flatten(1))
