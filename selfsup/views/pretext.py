"""Pretext-task inputs and targets, cut from view batches: rotations, grids of tiles, the
chromatic-aberration defences, permutations of tiles and colour removal.

Every function takes float view batches ``x: [B, C, H, W]`` (already normalised by the view
pipeline) and, where it draws anything, a ``torch.Generator`` on the batch's device; there are no
per-image Python loops: tiles are cut with one advanced-indexing gather for the whole batch.
Methods call these from their ``prepare(views, generator)`` hook (see ``Trainer.make_views``),
so every draw is fixed by the seed, rank and step.

Grid geometry (``grid_positions``): a grid of ``grid x grid`` square tiles of side ``tile``, with
``gap`` pixels between neighbouring cells and each tile moved by its own uniform integer offset in
[-jitter, jitter] along each axis. The whole grid spans ``grid * tile + (grid - 1) * gap +
2 * jitter`` pixels and is placed uniformly at random inside the view. Doersch et al. 2015 (§3)
use tile 96, gap 48, jitter 7; Noroozi & Favaro 2016 (§3.3) crop a 64-px tile at random inside
each 75-px cell, which is gap = 11 (the cell's slack) with jitter = gap / 2.
"""

from __future__ import annotations

import functools
import numpy as np
import torch
from torch import Tensor

from .ops import LUMA, const

# Doersch et al. 2015, §3 "Avoiding trivial solutions": chromatic aberration shifts green against
# magenta (red + blue), so the network can tell where in the image a patch came from. Projection
# removes this colour axis from every pixel.
GREEN_MAGENTA = (-1 / 6**0.5, 2 / 6**0.5, -1 / 6**0.5)


# ----------------------------------------------------------------------------- rotations


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image (Gidaris et al. 2018, §2.2: the 4 rotations of an image
    go into the same batch).

    x: [B, C, H, H] (square). Returns ([4B, C, H, H], targets [4B]): rows k*B..(k+1)*B-1 are the
    batch rotated by k * 90 degrees counter-clockwise, with target k.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square views, got {tuple(x.shape[-2:])}")
    b = x.shape[0]
    out = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    targets = torch.arange(4, device=x.device).repeat_interleave(b)
    return out, targets


# ----------------------------------------------------------------------------- tile grids


def grid_span(grid: int, tile: int, gap: int, jitter: int) -> int:
    """Side, in pixels, of the region a grid of tiles can touch."""
    return grid * tile + (grid - 1) * gap + 2 * jitter


def check_grid(size: int, grid: int, tile: int, gap: int, jitter: int, where: str) -> None:
    """ValueError naming `where`'s settings when the grid does not fit in a `size` view."""
    span = grid_span(grid, tile, gap, jitter)
    if tile < 1 or gap < 0 or jitter < 0 or span > size:
        raise ValueError(
            f"{where}: a {grid}x{grid} grid of {tile}-px tiles with gap {gap} and jitter {jitter} "
            f"spans {span} px, which does not fit in {size}-px views; raise views.size or lower "
            f"{where}.tile / gap / jitter")


def grid_positions(n: int, size: int, grid: int, tile: int, gap: int, jitter: int,
                   g: torch.Generator, device: torch.device | str) -> Tensor:
    """Top-left corners (y, x) of the tiles of `n` random grids in `size`-px views.

    Returns [n, grid * grid, 2] int64, cells in row-major order. Cell (i, j) of image b starts at
    origin_b + (i, j) * (tile + gap) + jitter + u, with the origin uniform over the positions that
    keep the span inside the view and u uniform in [-jitter, jitter]^2, drawn per tile.
    """
    check_grid(size, grid, tile, gap, jitter, "grid")
    slack = size - grid_span(grid, tile, gap, jitter)
    origin = torch.randint(0, slack + 1, (n, 1, 2), generator=g, device=device)
    offset = torch.randint(-jitter, jitter + 1, (n, grid * grid, 2), generator=g, device=device)
    cells = torch.arange(grid, device=device) * (tile + gap) + jitter
    base = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), dim=-1).reshape(1, -1, 2)
    return origin + base + offset


def draw_channel_shifts(n: int, tiles: int, channels: int, shift: int, g: torch.Generator,
                        device: torch.device | str) -> Tensor:
    """[n, tiles, channels, 2] integer offsets in [-shift, shift] (y, x) for every channel of every
    tile: Noroozi & Favaro's defence against chromatic aberration (§3.3, colour channels jittered
    spatially by 0, 1 or 2 pixels)."""
    return torch.randint(-shift, shift + 1, (n, tiles, channels, 2), generator=g, device=device)


def cut_tiles(x: Tensor, pos: Tensor, tile: int, channel_shift: Tensor | None = None) -> Tensor:
    """The tiles at `pos` ([B, T, 2] top-left (y, x)) of x [B, C, H, W], in one gather.

    channel_shift: optional [B, T, C, 2] per-channel offsets added to each tile's position; pixels
    that would fall outside the view repeat the border. Returns [B, T, C, tile, tile].
    """
    b, c, h, w = x.shape
    t = pos.shape[1]
    r = torch.arange(tile, device=x.device)
    if channel_shift is None:
        pos = pos[:, :, None, :].expand(b, t, c, 2)
    else:
        pos = pos[:, :, None, :] + channel_shift
    ys = (pos[..., 0, None] + r).clamp_(0, h - 1)  # [B, T, C, tile]
    xs = (pos[..., 1, None] + r).clamp_(0, w - 1)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, 1, c, 1, 1)
    return x[bi, ci, ys[..., :, None], xs[..., None, :]]  # [B, T, C, tile, tile]


def normalize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Each tile's channels to zero mean and unit standard deviation on their own (Noroozi &
    Favaro §3.3: so that tiles cannot be matched by their low-level statistics).

    tiles: [..., C, h, w]; a flat channel keeps std 1 in the denominator (eps), as the official
    code replaces a zero std by 1.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / torch.where(std > eps, std, torch.ones_like(std))


# ----------------------------------------------------------------------------- colour


def project_green_magenta(x: Tensor) -> Tensor:
    """Remove every pixel's component along the green-magenta axis (Doersch et al. §3:
    "projection", shifting green and magenta towards grey). x: [..., 3, h, w]."""
    if x.shape[-3] != 3:
        return x.clone()
    v = const(GREEN_MAGENTA, x.device, x.dtype).view(3, 1, 1)
    return x - v * (x * v).sum(dim=-3, keepdim=True)


def drop_colours(x: Tensor, g: torch.Generator, noise: float = 0.01) -> Tensor:
    """Doersch et al. §3 "color dropping": keep one random channel of each image or tile and
    replace the other two by Gaussian noise with `noise` times the kept channel's standard
    deviation. x: [N, 3, h, w] (1-channel input is returned as is)."""
    if x.shape[-3] != 3:
        return x.clone()
    n = x.shape[0]
    keep = torch.randint(0, 3, (n,), generator=g, device=x.device)
    mask = (torch.arange(3, device=x.device)[None] == keep[:, None]).to(x.dtype).view(n, 3, 1, 1)
    kept = (x * mask).sum(dim=1, keepdim=True)  # [N, 1, h, w]
    std = kept.std(dim=(-2, -1), keepdim=True)
    eps = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return x * mask + (1 - mask) * eps * (noise * std)


def remove_colour(x: Tensor) -> Tensor:
    """Luma (ITU-R 601 weights) repeated in every channel: a colour image's grey version, with the
    channel count the backbone expects. x: [..., C, h, w]; 1 channel is returned as is. The views
    are normalised per channel, so this is the luma of the normalised channels: every channel
    carries the same linear mix, which is what removes the colour."""
    if x.shape[-3] != 3:
        return x.clone()
    w = const(LUMA, x.device, x.dtype).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True).expand_as(x).contiguous()


# ----------------------------------------------------------------------------- permutations


@functools.lru_cache(maxsize=8)
def _all_permutations(cells: int) -> Tensor:
    """Every permutation of range(cells), [cells!, cells] uint8, built by inserting the largest
    value at each place of the permutations of one fewer (no Python loop over the cells! rows)."""
    perms = torch.zeros(1, 1, dtype=torch.uint8)
    for k in range(2, cells + 1):
        rows = perms.shape[0]
        out = torch.empty(k, rows, k, dtype=torch.uint8)
        for i in range(k):
            out[i, :, :i] = perms[:, :i]
            out[i, :, i] = k - 1
            out[i, :, i + 1:] = perms[:, i:]
        perms = out.reshape(k * rows, k)
    return perms


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Hamming distances: a [M, T], b [N, T] -> [M, N] (positions that differ)."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


@functools.lru_cache(maxsize=16)
def _permutation_set(n: int, cells: int, seed: int) -> Tensor:
    # numpy for the ~1000 small passes over 9! rows: torch's per-op threading overhead made this
    # 10x slower on a busy 2-core machine.
    pool = _all_permutations(cells)
    cols = pool.T.contiguous().numpy()  # [cells, N]: one contiguous row per position
    first = int(torch.randint(len(pool), (1,), generator=torch.Generator().manual_seed(seed)))

    def distances(j: int) -> np.ndarray:  # [N] Hamming distances of every permutation to pool[j]
        d = np.zeros(cols.shape[1], dtype=np.int32)
        for i in range(cells):
            d += cols[i] != cols[i, j]
        return d

    chosen = [first]
    min_d = distances(first)
    sum_d = min_d.copy()
    # The minimum distance decides, the summed distance breaks its ties (sum_d < big). Chosen
    # permutations are at distance 0 from themselves, every other one at 2 or more, so the argmax
    # never picks one twice.
    big = cells * n + 1
    for _ in range(n - 1):
        j = int(np.argmax(min_d * big + sum_d))  # the first of equal scores: deterministic
        chosen.append(j)
        d = distances(j)
        np.minimum(min_d, d, out=min_d)
        sum_d += d
    return pool[chosen].long()


def permutation_set(n: int, cells: int = 9, seed: int = 0) -> Tensor:
    """`n` permutations of `cells` tiles, [n, cells] int64, chosen greedily to be far apart.

    Noroozi & Favaro 2016, §3.2 and Algorithm 1: start from one permutation (here drawn from
    `seed`), then repeatedly add the permutation farthest from those chosen so far. Farthest means
    the largest minimum Hamming distance to the chosen set, ties broken by the largest summed
    distance (the paper's Algorithm 1 ranks by the summed distance alone; the minimum is what
    keeps any two classes of the pretext task apart), then by the first index. The same
    (n, cells, seed) always gives the same set.
    """
    if cells < 2:
        raise ValueError(f"a permutation set needs at least 2 cells, got {cells}")
    total = 1
    for k in range(2, cells + 1):
        total *= k
    if not 1 <= n <= total:
        raise ValueError(f"a permutation set of {cells} cells holds 1..{total} permutations, "
                         f"asked for {n}")
    return _permutation_set(n, cells, seed).clone()


def permute_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Slot i of image b gets tile perms[b, i]: tiles [B, T, ...], perms [B, T] -> [B, T, ...]."""
    idx = perms.view(*perms.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


# Doersch et al. label the 8 neighbours of the centre cell of a 3x3 grid in row-major order.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
CENTRE = 4


def neighbour_pairs(n: int, pairs: int, g: torch.Generator, device: torch.device | str
                    ) -> tuple[Tensor, Tensor]:
    """For each of `n` images, `pairs` distinct neighbours of the centre cell.

    Returns (cells [n, 1 + pairs]: the centre cell then the neighbours' cell indices, labels
    [n, pairs]: each neighbour's position class in 0..7, Doersch et al. fig. 2)."""
    order = torch.rand(n, 8, generator=g, device=device).argsort(dim=1)[:, :pairs]
    cells = const(tuple(float(c) for c in NEIGHBOURS), device, torch.float32).long()[order]
    centre = torch.full((n, 1), CENTRE, device=device, dtype=torch.long)
    return torch.cat([centre, cells], dim=1), order
