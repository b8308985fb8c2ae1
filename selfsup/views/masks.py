"""Patch masks for masked image modelling, drawn for a whole batch at once.

A mask is given as a patch *order*: `order` [B, L] is a permutation of 0..L-1 per image whose
first K entries are the visible patches and whose last L - K are the masked ones. This one form
serves every consumer:
- an encoder that sees only the visible patches gathers `order[:, :K]` (MAE, SplitMask);
- an encoder that replaces masked patches by a mask token takes `mask_from_order` (BEiT);
- SplitMask's two disjoint halves are `order[:, :L//2]` and `order[:, L//2:]`.

Every draw comes from the caller's `torch.Generator`, so a training step's masks are fixed by
its seed, as its augmentations are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible when `mask_ratio` of `num_patches` are masked (MAE rounds down the
    kept count: int(L * (1 - ratio)))."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def random_order(batch: int, num_patches: int, g: torch.Generator, device: torch.device) -> Tensor:
    """Uniformly random patch orders [B, L]: MAE's random masking (He et al. 2021 §3, "Masking";
    the official code sorts per-patch uniform noise and keeps the first K)."""
    noise = torch.rand(batch, num_patches, generator=g, device=device)
    return noise.argsort(dim=1)


def block_order(batch: int, grid_h: int, grid_w: int, mask_ratio: float, g: torch.Generator,
                device: torch.device, min_block: int = 4, max_aspect: float = 3.0,
                rounds: int = 30) -> Tensor:
    """Block-wise masking (BEiT, Bao et al. 2021, §2.5 and Algorithm 1), batched.

    Each round, every image that still lacks masked patches draws a rectangle of s patches,
    s ~ U[min_block, remaining], aspect ratio r log-uniform in [1/max_aspect, max_aspect]
    (height sqrt(s r), width sqrt(s / r)), at a uniform position; it is kept only if it does not
    overshoot the image's budget of M = L - num_visible patches, as in BEiT's
    MaskingGenerator. After `rounds` rounds (BEiT tries until the budget is met), any shortfall
    is filled with random patches so every image has exactly M masked: the batch stays one tensor.
    BEiT's min_block is 16 of 196 patches; 4 suits the 8x8 grids of 32 px images at patch 4.
    Returns orders [B, L] with the M masked patches last.
    """
    L = grid_h * grid_w
    m = L - num_visible(L, mask_ratio)
    masked = torch.zeros(batch, grid_h, grid_w, dtype=torch.bool, device=device)
    rows = torch.arange(grid_h, device=device).view(1, -1, 1)
    cols = torch.arange(grid_w, device=device).view(1, 1, -1)
    lo = max(1, min(min_block, m))
    log_r = math.log(max_aspect)
    for _ in range(rounds if m > 0 else 0):
        count = masked.sum(dim=(1, 2))  # [B]
        need = count < m
        if not bool(need.any()):
            break
        remaining = (m - count).clamp_min(lo).float()
        u = torch.rand(4, batch, generator=g, device=device)
        s = lo + u[0] * (remaining - lo)  # target area, in patches
        r = torch.exp((2 * u[1] - 1) * log_r)  # aspect ratio h / w
        h = (s * r).sqrt().round().clamp(1, grid_h).long()
        w = (s / r).sqrt().round().clamp(1, grid_w).long()
        top = (u[2] * (grid_h - h + 1)).long()
        left = (u[3] * (grid_w - w + 1)).long()
        rect = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
        grown = masked | rect
        ok = need & (grown.sum(dim=(1, 2)) <= m)
        masked = torch.where(ok.view(-1, 1, 1), grown, masked)
    # Masked patches score in [1, 2), the others in [0, 1): sorting puts the block patches last,
    # and the top-up patches (if a budget was not met) are random among the unmasked.
    score = masked.view(batch, L).float() + torch.rand(batch, L, generator=g, device=device)
    return score.argsort(dim=1)


def mask_from_order(order: Tensor, visible: int) -> Tensor:
    """[B, L] bool, True at the masked patches (every index after the first `visible` of order)."""
    mask = torch.zeros_like(order, dtype=torch.bool)
    return mask.scatter_(1, order[:, visible:], True)


def draw_order(kind: str, batch: int, grid: tuple[int, int], mask_ratio: float,
               g: torch.Generator, device: torch.device) -> Tensor:
    """Patch orders [B, L] for `kind` "random" or "block" (see above)."""
    if kind == "random":
        return random_order(batch, grid[0] * grid[1], g, device)
    if kind == "block":
        return block_order(batch, grid[0], grid[1], mask_ratio, g, device)
    raise ValueError(f"masking must be 'random' or 'block', got {kind!r}")


def mask_views(views: list[Tensor], patch_size: int, kind: str, mask_ratio: float,
               g: torch.Generator, method: str) -> list[Tensor]:
    """The `prepare` of the masked models: [one image view [B, C, H, W]] -> [the view, patch
    orders [B, L] drawn by `draw_order`]."""
    if len(views) != 1:
        raise ValueError(f"{method} takes 1 view, got {len(views)}: set views.n_views=1")
    x = views[0]
    grid = (x.shape[-2] // patch_size, x.shape[-1] // patch_size)
    return [x, draw_order(kind, x.shape[0], grid, mask_ratio, g, x.device)]
