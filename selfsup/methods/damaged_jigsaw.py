"""Damaged jigsaw: Learning Image Representations by Completing Damaged Jigsaw Puzzles.

Kim, Cho, Yoo, Kweon, 2018 (WACV). https://arxiv.org/abs/1802.01880

A jigsaw puzzle (Noroozi & Favaro 2016, see jigsaw.py) made harder: one tile is removed and the
colour is removed from the others. The network solves three tasks at once from the shared tile
encoder: it names the permutation, inpaints the missing tile (in colour) and colourises the tiles
it was given (§3). Damaging the data this way forces the features to carry what jigsaw alone
leaves out (the content of a region from its context, and colour from shape).

Here the tiles, permutation set and shortcuts are the jigsaw's (`parts/puzzle.py`). The missing tile is a zero tile
in its slot (the input is normalised per tile, so zero is its mean). The inpainting decoder reads
the concatenated tile features; the colouriser reads each present tile's own feature and predicts
its colour as the difference between the colour tile and its grey version (the grey part is the
input, so only colour is left to predict). Both are linear decoders to a decode_size-px tile
(the targets area-averaged to it), trained with a squared error; the three losses are weighted by settings. On 1-channel data there is no colour to restore and
the colourisation loss is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses import cross_entropy_accuracy
from selfsup.parts.puzzle import PuzzleConfig, PuzzleHead, cut_puzzle, draw_permutations
from selfsup.protocol import Output, Progress
from selfsup.views.pretext import normalize_tiles, permutation_set, permute_tiles, remove_colour


@dataclass
class DamagedJigsawConfig(PuzzleConfig):
    """name: registry key.
    grid, tile, gap, jitter, channel_shift, normalize, n_perms, perm_seed, tile_dim, head_hidden,
        head_layers: the puzzle and its classifier, `parts.puzzle.PuzzleConfig`'s.
    decode_size: side of the inpainted and colourised tiles; the targets are the tiles
        area-averaged to it (8: ours, about half a 14-px tile).
    perm_weight / inpaint_weight / color_weight: weights of the permutation cross-entropy, the
        inpainted tile's squared error and the colourisation squared error in the total loss
        (1 each: ours; the paper trains the three jointly).
    """

    name: str = "damaged_jigsaw"
    decode_size: int = 8
    perm_weight: float = 1.0
    inpaint_weight: float = 1.0
    color_weight: float = 1.0

    # Tiles of 5-7 px from 24 px views (see JigsawConfig.tiny).
    tiny = ("views.n_views=1", "views.size=24", "method.n_perms=24", "method.tile_dim=16",
            "method.head_hidden=32", "method.decode_size=4")

    def __post_init__(self):
        super().__post_init__()
        if self.decode_size < 1:
            raise ValueError(f"method.decode_size must be at least 1, got {self.decode_size}")
        for field in ("perm_weight", "inpaint_weight", "color_weight"):
            if getattr(self, field) < 0:
                raise ValueError(f"method.{field} must be >= 0, got {getattr(self, field)}")


def damaged_losses(perm_logits: torch.Tensor, perm_idx: torch.Tensor, inpainted: torch.Tensor,
                   missing_tile: torch.Tensor, colour: torch.Tensor, colour_target: torch.Tensor,
                   present: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three losses of the damaged puzzle.

    perm_logits: [B, P]; perm_idx: [B]. inpainted, missing_tile: [B, C*d*d], the prediction and
    the removed colour tile. colour, colour_target: [B, T, C*d*d], predicted and true colour
    (colour tile minus its grey version) of every slot; present: [B, T], 1 where a tile was given.
    Returns cross-entropy, accuracy, and the two mean squared errors (per pixel).
    """
    ce, acc = cross_entropy_accuracy(perm_logits, perm_idx)
    inpaint = F.mse_loss(inpainted.float(), missing_tile.float())
    err = (colour.float() - colour_target.float()).pow(2).mean(-1)  # [B, T]
    col = (err * present).sum() / present.sum().clamp(min=1)
    return {"perm": ce, "perm_acc": acc, "inpaint_mse": inpaint, "color_mse": col}


def image_channels(backbone: nn.Module) -> int:
    """Input channels of a backbone: those of its first convolution (ResNet stem, ViT patch
    embedding)."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(f"DamagedJigsaw needs a convolutional backbone, got {type(backbone).__name__}")


def pool_tiles(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, t, t] -> [N, C * size * size], area-averaged (or repeated, for tiles under size)."""
    return F.adaptive_avg_pool2d(x.float(), size).flatten(1)


class DamagedJigsaw(nn.Module):
    config_class = DamagedJigsawConfig

    def __init__(self, cfg: DamagedJigsawConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        tiles = cfg.grid ** 2
        self.register_buffer("permutations", permutation_set(cfg.n_perms, tiles, cfg.perm_seed))
        self.head = PuzzleHead(backbone.dim, cfg)
        # Linear decoders to a fixed decode_size x decode_size tile: the tile side is only known
        # from the views, and the optimizer is built before the first batch.
        c, d = image_channels(backbone), cfg.decode_size
        self.inpainter = nn.Linear(tiles * cfg.tile_dim, c * d * d)
        # Grey images have no colour to restore: no colouriser, so no parameter goes without a
        # gradient (which DDP refuses).
        self.colouriser = nn.Linear(cfg.tile_dim, c * d * d) if c > 1 else None

    @torch.no_grad()
    def prepare(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A view batch [B, C, S, S] -> grey shuffled tiles with one zeroed [B * T, C, t, t], the
        permutation index [B], the missing slot [B] and the colour tiles in slot order
        [B * T, C, t, t] (view-normalised, the targets)."""
        if len(views) != 1:
            raise ValueError(f"DamagedJigsaw takes 1 view, got {len(views)}: set views.n_views=1")
        x = views[0]
        b = x.shape[0]
        tiles = cut_puzzle(x, self.cfg, generator)  # [B, T, C, t, t], colour
        idx, perms = draw_permutations(b, self.permutations, generator, x.device)
        colour = permute_tiles(tiles, perms)
        t = colour.shape[1]
        missing = torch.randint(0, t, (b,), generator=generator, device=x.device)
        grey = remove_colour(colour)
        if self.cfg.normalize:
            grey = normalize_tiles(grey)
        keep = (torch.arange(t, device=x.device)[None] != missing[:, None]).to(grey.dtype)
        grey = grey * keep.view(b, t, 1, 1, 1)
        return [grey.flatten(0, 1), idx, missing, colour.flatten(0, 1)]

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 4:
            raise ValueError("DamagedJigsaw takes (tiles, indices, missing, colour) from its "
                             f"prepare(); got {len(views)} tensors")
        tiles, idx, missing, colour = views
        b, t = idx.shape[0], self.cfg.grid ** 2
        c, d = colour.shape[1], self.cfg.decode_size
        h, logits = self.head(self.backbone(tiles).view(b, t, -1))  # [B, T, tile_dim], [B, P]
        rows = torch.arange(b, device=idx.device)
        present = (torch.arange(t, device=idx.device)[None] != missing[:, None]).float()
        truth = pool_tiles(colour, d).view(b, t, -1)  # [B, T, C*d*d]
        if self.colouriser is not None and c > 1:
            target = pool_tiles(colour - remove_colour(colour), d).view(b, t, -1)
            predicted = self.colouriser(h)
        else:  # nothing to colourise: a zero loss
            target = predicted = truth.new_zeros(b, t, 1)
        parts = damaged_losses(logits, idx, self.inpainter(h.flatten(1)), truth[rows, missing],
                               predicted, target, present)
        w = self.cfg
        loss = (w.perm_weight * parts["perm"] + w.inpaint_weight * parts["inpaint_mse"]
                + w.color_weight * parts["color_mse"])
        return Output(loss, {k: v.detach() for k, v in parts.items() if k != "perm"})
