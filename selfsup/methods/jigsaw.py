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
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.heads import mlp
from selfsup.methods.schedules import Progress
from selfsup.views.pretext import (check_grid, cut_tiles, draw_channel_shifts, grid_positions,
                                   normalize_tiles, permutation_set, permute_tiles)


@dataclass
class JigsawConfig:
    """name: registry key.
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

    name: str = "jigsaw"
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
        check_puzzle_config(self)

    def geometry(self, size: int) -> tuple[int, int, int, int]:
        return puzzle_geometry(self, size)


def check_puzzle_config(cfg) -> None:
    """ValueError naming the first bad field of a jigsaw-style config."""
    if cfg.grid < 2:
        raise ValueError(f"method.grid must be at least 2, got {cfg.grid}")
    for field, low in (("tile", 1), ("gap", 0), ("jitter", 0), ("channel_shift", 0)):
        value = getattr(cfg, field)
        if value is not None and value < low:
            raise ValueError(f"method.{field} must be at least {low} (or null), got {value}")
    for field in ("n_perms", "tile_dim", "head_hidden", "head_layers"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"method.{field} must be at least 1, got {getattr(cfg, field)}")
    total = 1
    for k in range(2, cfg.grid ** 2 + 1):
        total *= k
    if cfg.n_perms > total:
        raise ValueError(f"method.n_perms={cfg.n_perms}: a {cfg.grid}x{cfg.grid} grid has only "
                         f"{total} permutations")


def puzzle_geometry(cfg, size: int) -> tuple[int, int, int, int]:
    """(tile, gap, jitter, channel_shift) for `size`-px views, the unset ones scaled from the
    paper's 64-px tiles in 75-px cells, checked to fit."""
    cell = size // cfg.grid
    tile = cfg.tile if cfg.tile is not None else max(1, round(cell * 64 / 75))
    slack = max(0, cell - tile)
    gap = cfg.gap if cfg.gap is not None else slack
    jitter = cfg.jitter if cfg.jitter is not None else slack // 2
    shift = cfg.channel_shift if cfg.channel_shift is not None else round(tile * 2 / 64)
    check_grid(size, cfg.grid, tile, gap, jitter, "method")
    return tile, gap, jitter, shift


def cut_puzzle(x: torch.Tensor, cfg, g: torch.Generator) -> torch.Tensor:
    """The grid of tiles of every image, in place order: x [B, C, S, S] -> [B, T, C, t, t], each
    tile at a random place in its cell and its channels shifted (when channel_shift > 0)."""
    b, c, size = x.shape[0], x.shape[1], x.shape[-1]
    tile, gap, jitter, shift = puzzle_geometry(cfg, size)
    t = cfg.grid ** 2
    pos = grid_positions(b, size, cfg.grid, tile, gap, jitter, g, x.device)
    shifts = draw_channel_shifts(b, t, c, shift, g, x.device) if shift > 0 and c > 1 else None
    return cut_tiles(x, pos, tile, shifts)


class PuzzleHead(nn.Module):
    """The context-free network's top (fig. 3): a shared fc6 on every tile feature, the T
    outputs concatenated in slot order, then fc7-fc8 to `out` logits.

    tile_features: [B, T, D] -> per-tile [B, T, tile_dim] and logits [B, out]."""

    def __init__(self, dim: int, tiles: int, tile_dim: int, hidden: int, layers: int, out: int):
        super().__init__()
        self.fc6 = nn.Sequential(nn.Linear(dim, tile_dim), nn.ReLU(inplace=True))
        self.top = mlp(tiles * tile_dim, hidden, out, layers)

    def forward(self, tile_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc6(tile_features)  # [B, T, tile_dim]
        return h, self.top(h.flatten(1))


def draw_permutations(n: int, perms: torch.Tensor, g: torch.Generator, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One permutation of the set per image, uniformly: (indices [n], permutations [n, T])."""
    idx = torch.randint(0, perms.shape[0], (n,), generator=g, device=device)
    return idx, perms.to(device)[idx]


def permutation_loss(logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the permutation set, and the share named right.

    logits: [B, P]; idx: [B], each image's permutation index in the set."""
    logits = logits.float()
    return F.cross_entropy(logits, idx), (logits.argmax(dim=1) == idx).float().mean()


class Jigsaw(nn.Module):
    config_class = JigsawConfig

    def __init__(self, cfg: JigsawConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        tiles = cfg.grid ** 2
        # A buffer: saved with every checkpoint, and loading a checkpoint restores the set the
        # run was trained with.
        self.register_buffer("permutations", permutation_set(cfg.n_perms, tiles, cfg.perm_seed))
        self.head = PuzzleHead(backbone.dim, tiles, cfg.tile_dim, cfg.head_hidden,
                               cfg.head_layers, cfg.n_perms)

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

    def forward(self, views: list[torch.Tensor], progress: Progress
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"Jigsaw takes (tiles, indices) from its prepare(); got {len(views)} tensors")
        tiles, idx = views
        h = self.backbone(tiles)  # [B * T, D]: one pass through the shared tile encoder
        _, logits = self.head(h.view(idx.shape[0], -1, h.shape[-1]))
        loss, acc = permutation_loss(logits, idx)
        return loss, {"perm_acc": acc}

    def on_step_end(self, progress: Progress) -> None:
        pass  # no per-step state
