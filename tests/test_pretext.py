"""Pretext tasks: rotations, tile geometry, permutation sets, the defences against shortcuts, and
each method's inputs and targets (the registry-wide tests in test_train.py cover training)."""

import pytest
import torch
from torch import nn

from selfsup.methods.damaged_jigsaw import DamagedJigsaw, DamagedJigsawConfig
from selfsup.methods.jigsaw import Jigsaw, JigsawConfig
from selfsup.methods.relpatch import RelPatch, RelPatchConfig
from selfsup.methods.rotation import Rotation, RotationConfig
from selfsup.protocol import Progress
from selfsup.views.pretext import (GREEN_MAGENTA, cut_tiles, draw_channel_shifts, drop_colours,
                                   grid_positions, hamming, normalize_tiles, permutation_set,
                                   permute_tiles, project_green_magenta, remove_colour, rotations)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def coords(b=2, c=3, size=24):
    """Pixel value 1e6 b + 1e5 c + 1000 y + x: every pixel names where it came from."""
    bi = torch.arange(b).view(b, 1, 1, 1) * 1_000_000
    ci = torch.arange(c).view(1, c, 1, 1) * 100_000
    yi = torch.arange(size).view(1, 1, size, 1) * 1000
    xi = torch.arange(size).view(1, 1, 1, size)
    return (bi + ci + yi + xi).double()


class SmallCNN(nn.Module):
    """A backbone small enough to train in seconds: two convs, global average pool, dim 32."""

    dim = 32

    def __init__(self, c=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


# ----------------------------------------------------------------------------- rotations


def test_rotations_targets_and_direction():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 3] = 1  # top-right corner
    x[1] = torch.rand(1, 4, 4)
    out, t = rotations(x)
    assert out.shape == (8, 1, 4, 4) and t.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # a quarter turn counter-clockwise takes the top-right corner to the top-left, then on
    assert out[2, 0, 0, 0] == 1 and out[4, 0, 3, 0] == 1 and out[6, 0, 3, 3] == 1
    for k in range(4):  # all four rotations of every image, in the same batch
        assert torch.equal(out[2 * k + 1], torch.rot90(x[1], k, dims=(-2, -1)))
    assert torch.equal(torch.rot90(out[3], 3, dims=(-2, -1)), x[1])


def test_rotation_method_sees_all_four_and_scores_accuracy():
    m = Rotation(RotationConfig(head_hidden=8), SmallCNN(1))
    images, targets = m.prepare([torch.randn(5, 1, 8, 8)], gen())
    assert images.shape == (20, 1, 8, 8) and torch.bincount(targets).tolist() == [5] * 4
    loss, metrics, _ = m([images, targets], Progress(0, 1, 1))
    assert loss.ndim == 0 and 0 <= metrics["rot_acc"] <= 1


# ----------------------------------------------------------------------------- tile geometry


@pytest.mark.parametrize("tile,gap,jitter", [(6, 0, 0), (5, 2, 0), (4, 3, 2), (14, 2, 1)])
def test_grid_positions_exact_gaps_and_jitter_bounds(tile, gap, jitter):
    size = 3 * tile + 2 * gap + 2 * jitter + 3  # 3 px of slack for the grid's placement
    pos = grid_positions(4000, size, 3, tile, gap, jitter, gen(), "cpu")  # [N, 9, 2]
    assert pos.shape == (4000, 9, 2)
    assert pos.min() >= 0 and pos.max() <= size - tile  # every tile inside the view
    pitch = tile + gap
    cell = torch.arange(9)
    lattice = torch.stack([cell // 3, cell % 3], -1) * pitch  # [9, 2] row-major cells
    # corner = each tile's position minus its cell's lattice offset: origin + jitter + its own
    # shift, so within an image the corners spread over at most 2 * jitter
    corner = pos - lattice
    assert (corner.max(1).values - corner.min(1).values).max() <= 2 * jitter
    if jitter == 0:
        assert torch.equal(corner, corner[:, :1].expand_as(corner))  # an exact lattice
        assert torch.equal(pos[:, 1] - pos[:, 0], torch.tensor([0, pitch]).expand(4000, 2))
    else:  # the shifts reach both bounds and nothing beyond: spacing in [gap - 2j, gap + 2j]
        spacing = pos[:, 1, 1] - pos[:, 0, 1] - tile
        assert spacing.min() == gap - 2 * jitter and spacing.max() == gap + 2 * jitter
    # the grid's placement uses the 3 px of slack; with the shifts, the centre tile's corner
    # takes every value in [0, 3 + 2 * jitter]
    assert torch.unique(pos[:, 4, 0] - pitch).numel() == 3 + 1 + 2 * jitter


def test_cut_tiles_takes_exactly_the_pixels_at_the_positions():
    x = coords()
    pos = grid_positions(2, 24, 3, 5, 2, 1, gen(), "cpu")
    tiles = cut_tiles(x, pos, 5)
    assert tiles.shape == (2, 9, 3, 5, 5)
    for b in range(2):
        for t in range(9):
            y0, x0 = pos[b, t].tolist()
            assert torch.equal(tiles[b, t], x[b, :, y0:y0 + 5, x0:x0 + 5])
    # per-channel shifts move each channel on its own (Noroozi & Favaro §3.3)
    shifts = draw_channel_shifts(2, 9, 3, 2, gen(1), "cpu")
    shifted = cut_tiles(x, pos, 5, shifts)
    r = torch.arange(5)
    for b in range(2):
        for t in range(9):
            for c in range(3):
                y0, x0 = (pos[b, t] + shifts[b, t, c]).tolist()
                ys, xs = (y0 + r).clamp(0, 23), (x0 + r).clamp(0, 23)  # the border repeats
                assert torch.equal(shifted[b, t, c], x[b, c][ys][:, xs])
    assert shifts.min() == -2 and shifts.max() == 2


def test_default_geometry_follows_the_papers_proportions():
    assert RelPatchConfig().geometry(48) == (11, 6, 1)  # Doersch: 96 / 48 / 7
    assert JigsawConfig().geometry(48) == (14, 2, 1, 0)  # Noroozi: 64 px in 75 px cells
    assert JigsawConfig().geometry(225) == (64, 11, 5, 2)  # the paper's own numbers
    with pytest.raises(ValueError, match="does not fit"):
        RelPatchConfig(tile=20).geometry(48)


def test_relpatch_labels_name_the_neighbours_position():
    m = RelPatch(RelPatchConfig(tile=4, gap=2, jitter=0, aberration="none", head_hidden=8), SmallCNN())
    x = coords(b=3, size=20).float()
    patches, labels = m.prepare([x], gen())
    p = patches.view(3, 9, 3, 4, 4)[:, :, 0, 0, 0]  # top-left pixel of channel 0 names its origin
    y, xx = (p % 100_000) // 1000, p % 1000
    dy, dx = (y[:, 1:] - y[:, :1]) / 6, (xx[:, 1:] - xx[:, :1]) / 6  # in cells (pitch 6)
    offsets = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
    assert torch.equal(torch.stack([dy, dx], -1).long(), offsets[labels.view(3, 8)])
    assert sorted(labels.view(3, 8)[0].tolist()) == list(range(8))  # all 8 neighbours by default


# ----------------------------------------------------------------------------- permutations


def test_permutation_set_is_deterministic_and_far_apart():
    a, b = permutation_set(100, 9, seed=0), permutation_set(100, 9, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, permutation_set(100, 9, seed=1))
    assert torch.equal(a.sort(1).values, torch.arange(9).expand(100, 9))  # rows are permutations
    d = hamming(a, a) + 99 * torch.eye(100, dtype=torch.long)
    assert d.min() == 6  # measured; a random set of 100 has minimum distance 3 or less
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    dr = hamming(rand, rand) + 99 * torch.eye(100, dtype=torch.long)
    assert dr.min() < d.min()


def test_permutation_set_is_greedy_for_the_minimum_distance():
    import itertools

    pool = torch.tensor(list(itertools.permutations(range(5))))
    chosen = permutation_set(30, 5, seed=3)
    for k in range(1, 30):
        to_set = hamming(pool, chosen[:k]).min(1).values
        best = to_set.max()
        assert hamming(chosen[k:k + 1], chosen[:k]).min() == best, f"step {k} was not greedy"


def test_permute_tiles_puts_tile_perm_i_in_slot_i():
    tiles = torch.arange(2 * 4).view(2, 4, 1, 1, 1).float()
    perms = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    out = permute_tiles(tiles, perms).flatten(1)
    assert out.tolist() == [[2, 0, 3, 1], [4, 5, 6, 7]]


def test_permutation_set_is_saved_with_the_model():
    cfg = JigsawConfig(grid=2, n_perms=10, tile_dim=4, head_hidden=8)
    m = Jigsaw(cfg, SmallCNN())
    assert torch.equal(m.state_dict()["permutations"], permutation_set(10, 4, seed=0))
    other = Jigsaw(JigsawConfig(grid=2, n_perms=10, tile_dim=4, head_hidden=8, perm_seed=7), SmallCNN())
    assert not torch.equal(other.permutations, m.permutations)
    other.load_state_dict(m.state_dict())  # a loaded run uses the set it was trained with
    assert torch.equal(other.permutations, m.permutations)


def test_jigsaw_inputs_follow_the_drawn_permutation():
    cfg = JigsawConfig(tile=5, gap=1, jitter=0, channel_shift=0, normalize=False, n_perms=20,
                       tile_dim=4, head_hidden=8)
    m = Jigsaw(cfg, SmallCNN())
    x = coords(b=4, size=17).float()
    tiles, idx = m.prepare([x], gen())
    corner = tiles.view(4, 9, 3, 5, 5)[:, :, 0, 0, 0]
    cell = ((corner % 100_000) // 1000 // 6) * 3 + (corner % 1000) // 6  # the cell each slot shows
    assert torch.equal(cell.long(), m.permutations[idx])
    loss, metrics, _ = m([tiles, idx], Progress(0, 1, 1))
    assert loss.ndim == 0 and "perm_acc" in metrics
    t = normalize_tiles(torch.randn(3, 9, 3, 5, 5) * 4 + 2)
    assert t.mean((-2, -1)).abs().max() < 1e-5 and (t.std((-2, -1), unbiased=False) - 1).abs().max() < 1e-4


def test_damaged_jigsaw_removes_one_tile_and_the_colour():
    cfg = DamagedJigsawConfig(tile=5, gap=1, jitter=0, channel_shift=0, n_perms=20, tile_dim=4,
                              head_hidden=8, decode_size=3)
    m = DamagedJigsaw(cfg, SmallCNN())
    x = torch.randn(4, 3, 17, 17)
    grey, idx, missing, colour = m.prepare([x], gen())
    grey = grey.view(4, 9, 3, 5, 5)
    for b in range(4):
        assert grey[b, missing[b]].abs().max() == 0  # the removed tile is empty
        kept = [s for s in range(9) if s != missing[b]]
        assert torch.equal(grey[b, kept, 0], grey[b, kept, 1])  # no colour left
        assert torch.equal(grey[b, kept, 1], grey[b, kept, 2])
    assert not torch.equal(colour[:, 0], colour[:, 1])  # the targets keep it
    loss, metrics, _ = m([grey.flatten(0, 1), idx, missing, colour], Progress(0, 1, 1))
    assert {"perm_acc", "inpaint_mse", "color_mse"} <= set(metrics)
    loss.backward()
    assert m.inpainter.weight.grad.abs().sum() > 0 and m.colouriser.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- defences


def test_projection_removes_exactly_the_green_magenta_axis():
    x = torch.randn(5, 3, 6, 6)
    v = torch.tensor(GREEN_MAGENTA).view(1, 3, 1, 1)
    tint = torch.randn(5, 1, 6, 6)
    assert torch.allclose(project_green_magenta(x + tint * v), project_green_magenta(x), atol=1e-5)
    grey = torch.randn(5, 1, 6, 6).expand(5, 3, 6, 6)
    assert torch.allclose(project_green_magenta(grey), grey, atol=1e-6)  # greys are untouched


def test_colour_dropping_keeps_one_channel_and_noise():
    x = torch.randn(400, 3, 8, 8) * 3
    out = drop_colours(x, gen(), noise=0.01)
    same = (out == x).flatten(2).all(-1)  # [N, 3]: which channels are kept exactly
    assert torch.equal(same.sum(1), torch.ones(400, dtype=torch.long))
    assert same.float().mean(0).min() > 0.25  # the kept channel is drawn at random
    dropped = out[~same].flatten(1)
    assert 0.01 < dropped.std(1).mean() < 0.06  # noise at ~1/100 of the kept channel's std (3)
    assert torch.equal(remove_colour(x)[:, 0], remove_colour(x)[:, 2])


def planted_cue(kind, n, g, tile=8):
    """Grey noise images of a 3x3 grid of `tile`-px cells (no gap, no jitter: the grid is fixed)
    with a cue that gives each cell's position away: "tint", a green-magenta tint that grows
    with the cell's row and column; "shift", lateral chromatic aberration, the green channel
    displaced by one pixel away from the centre."""
    size = 3 * tile
    content = torch.randn(n, 1, size, size, generator=g)
    x = content.repeat(1, 3, 1, 1)
    for i in range(3):
        for j in range(3):
            cell = (slice(None), slice(None), slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile))
            if kind == "tint":
                v = torch.tensor(GREEN_MAGENTA).view(1, 3, 1, 1)
                x[cell] = x[cell] + 0.7 * (3 * i + j - 4) * v
            else:
                moved = torch.roll(content, shifts=(i - 1, j - 1), dims=(2, 3))
                x[:, 1:2][cell] = moved[cell]
    return x


@pytest.mark.parametrize("kind,defence", [("tint", "project"), ("shift", "drop")])
def test_defences_remove_a_planted_shortcut(kind, defence):
    """With every defence off, a small network learns the planted cue and solves the task; with
    the defence that targets the cue, the same training stays near chance (1/8)."""
    acc = {}
    for aberration in ("none", defence):
        torch.manual_seed(0)
        cfg = RelPatchConfig(tile=8, gap=0, jitter=0, aberration=aberration, head_hidden=64)
        m = RelPatch(cfg, SmallCNN())
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        g = gen(1)
        for _ in range(60):
            batch = m.prepare([planted_cue(kind, 16, g)], g)
            loss, _, _ = m(batch, Progress(0, 1, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            acc[aberration] = m(m.prepare([planted_cue(kind, 128, g)], g), Progress(0, 1, 1)).metrics["pos_acc"]
    assert acc["none"] > 0.6, acc  # the shortcut is there to be taken
    assert acc[defence] < 0.3, acc  # and the defence takes it away


def test_damaged_jigsaw_on_grey_images_trains_every_parameter():
    cfg = DamagedJigsawConfig(tile=5, gap=1, jitter=0, channel_shift=0, n_perms=20, tile_dim=4,
                              head_hidden=8, decode_size=3)
    m = DamagedJigsaw(cfg, SmallCNN(1))
    assert m.colouriser is None  # no colour to restore, and DDP wants a gradient for every weight
    loss, metrics, _ = m(m.prepare([torch.randn(4, 1, 17, 17)], gen()), Progress(0, 1, 1))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert metrics["color_mse"] == 0
