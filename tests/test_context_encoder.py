"""Context encoder (selfsup/methods/context_encoder.py): mask geometry, the overlap band's weights,
the channel-wise bottleneck, the mean fill, the L2 and GAN losses against direct computations, and
a two-set step in which each set moves only by its own loss. Training, exact resume and 2-process
runs are the registry-wide tests' (test_train.py, test_distributed.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.losses import gan_discriminator_loss, gan_generator_loss
from selfsup.methods.context_encoder import (ChannelwiseFC, ContextEncoder, ContextEncoderConfig,
                                             block_masks, center_box, center_masks, overlap_weights,
                                             region_masks)
from selfsup.protocol import Progress
from selfsup.train.step import backward_step
from selfsup.train.trainer import Trainer


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """The tiny run (digits: grey 16 px views, adversarial loss on, two parameter sets)."""
    out = tmp_path_factory.mktemp("ce")
    return Trainer(tiny_config("context_encoder", f"trainer.out={out}"), run_dir=out / "run")


def inputs(trainer, n, seed):
    """The method's inputs (masked, image, hole) for the first n training images."""
    x, texts = trainer.feed.gather(torch.arange(n))
    return trainer.make_views(x, seed, texts)


# ----------------------------------------------------------------------------- masks


def test_center_mask_erases_the_square_inside_its_overlap_band():
    top, side = center_box(32, 0.25)
    assert (top, side) == (8, 16)  # train.lua: fineSize/4 .. 3 fineSize/4
    hole = center_masks(2, 32, 0.25, 2, "cpu")
    expect = torch.zeros(32, 32)
    expect[10:22, 10:22] = 1
    assert hole.shape == (2, 1, 32, 32)
    assert torch.equal(hole[0, 0], expect) and torch.equal(hole[1, 0], expect)
    w = overlap_weights(hole, 2, 10.0)[0, 0]
    # train.lua's wtl2Matrix over the predicted square: 10 on its 2 px border, 1 inside; 0 outside.
    square = torch.zeros(32, 32)
    square[8:24, 8:24] = 10.0
    square[10:22, 10:22] = 1.0
    assert torch.equal(w, square)
    with pytest.raises(ValueError, match="method.overlap"):
        center_masks(1, 16, 0.25, 4, "cpu")


def test_overlap_band_is_the_context_within_overlap_pixels_of_the_hole():
    hole = (torch.rand(3, 1, 20, 20, generator=gen(1)) < 0.05).float()
    w = overlap_weights(hole, 2, 7.0)
    ys, xs = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    for b in range(3):
        pts = hole[b, 0].nonzero()
        # Chebyshev distance of every pixel to the nearest erased pixel
        d = torch.stack([torch.maximum((ys - y).abs(), (xs - x).abs()) for y, x in pts.tolist()]).amin(0)
        expect = torch.where(d == 0, 1.0, torch.where(d <= 2, 7.0, 0.0))
        assert torch.equal(w[b, 0], expect)
    assert torch.equal(overlap_weights(hole, 0, 7.0), hole)


def test_blocks_are_rectangles_within_the_coverage_and_follow_the_generator():
    m = block_masks(64, 32, 0.25, 16, gen(0), "cpu")
    share = m.mean(dim=(1, 2, 3))
    assert m.shape == (64, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    # each image keeps at least its first block (>= 4x4) and stays within 1/4, mostly near it
    assert (share >= 16 / 1024).all() and (share <= 0.25).all() and share.mean() > 0.15
    assert len({tuple(x.flatten().tolist()) for x in m}) == 64, "drawn per image"
    assert torch.equal(m, block_masks(64, 32, 0.25, 16, gen(0), "cpu"))
    assert not torch.equal(m, block_masks(64, 32, 0.25, 16, gen(1), "cpu"))
    one = block_masks(8, 32, 0.25, 1, gen(2), "cpu")[:, 0]  # a single block: one full rectangle
    for x in one:
        rows, cols = x.any(1).nonzero().flatten(), x.any(0).nonzero().flatten()
        assert x.sum() == len(rows) * len(cols) and 4 <= len(rows) <= 12 and 4 <= len(cols) <= 12
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()


def test_regions_erase_exactly_the_coverage_in_smooth_shapes():
    m = region_masks(16, 32, 0.25, 8, gen(0), "cpu")
    assert torch.equal(m.sum(dim=(1, 2, 3)), torch.full((16,), 256.0))
    assert len({tuple(x.flatten().tolist()) for x in m}) == 16
    assert torch.equal(m, region_masks(16, 32, 0.25, 8, gen(0), "cpu"))
    # shapes, not salt and pepper: an erased pixel's neighbours above and below are both erased
    # far more often than the 1/16 of independent pixels
    inner = m[..., 1:-1, 1:-1] * m[..., :-2, 1:-1] * m[..., 2:, 1:-1]
    assert inner.sum() > 0.4 * m[..., 1:-1, 1:-1].sum()


# ----------------------------------------------------------------------------- modules


def test_bottleneck_is_fully_connected_within_each_channel_and_only_there():
    fc = ChannelwiseFC(3, 4)
    assert fc.weight.shape == (3, 16, 16)
    x = torch.randn(2, 3, 4, 4)
    y = fc(x)
    x2 = x.clone()
    x2[:, 1, 3, 0] += 1.0  # one position of channel 1
    d = (fc(x2) - y).abs()
    assert d[:, [0, 2]].max() == 0, "no mixing across channels"
    assert (d[:, 1] > 0).all(), "every output position of the channel sees every input position"
    assert torch.allclose(y[0, 2].flatten(), fc.weight[2] @ x[0, 2].flatten() + fc.bias[2], atol=1e-6)


def test_decoder_resizes_to_a_view_that_is_no_power_of_two_times_the_map():
    bb = build_backbone(BackboneConfig(width=0.125), in_channels=3, image_size=28)
    model = ContextEncoder(ContextEncoderConfig(mask="regions", adversarial_weight=0.0), bb)
    masked, x, hole = model.prepare([torch.randn(2, 3, 28, 28)], gen(0))
    assert model.inpaint(masked).shape == (2, 3, 28, 28)  # 28 -> layer4 4x4 -> 32 -> resized
    assert [s.name for s in model.param_sets()] == ["model"] and model.discriminator is None


def test_bad_settings_name_their_key():
    for field, value in [("mask", "ring"), ("coverage", 1.0), ("overlap", -1), ("overlap_weight", 0),
                         ("adversarial_weight", 1.0), ("disc_width", 0), ("bottleneck", 0)]:
        with pytest.raises(ValueError, match=f"method.{field}"):
            ContextEncoderConfig(**{field: value})


# ----------------------------------------------------------------------------- losses


def test_removed_pixels_hold_the_dataset_mean(trainer):
    masked, x, hole = inputs(trainer, 16, 0)
    mean, std = torch.tensor(trainer.mean).view(1, -1, 1, 1), torch.tensor(trainer.std).view(1, -1, 1, 1)
    pixels = masked * std + mean  # back to [0, 1] pixel units
    assert masked.shape[1] == 1 and hole.sum() > 0
    erased = hole.expand_as(pixels) > 0
    assert torch.allclose(pixels[erased], mean.expand_as(pixels)[erased])
    assert torch.equal(masked[~erased], x[~erased])


def test_gan_losses_match_the_direct_formulas():
    real, fake = torch.randn(5), torch.randn(7)
    loss, acc = gan_discriminator_loss(real, fake)
    direct = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(loss, direct, atol=1e-5)
    assert torch.isclose(acc, ((real > 0).sum() + (fake <= 0).sum()) / 12.0)
    assert torch.allclose(gan_generator_loss(fake), -torch.log(torch.sigmoid(fake)).mean(), atol=1e-5)


def test_generator_and_discriminator_losses_by_hand(trainer):
    model = trainer.model.train()
    c = model.cfg
    views = inputs(trainer, 16, 1)
    masked, x, hole = views
    top, side = center_box(16, c.coverage)
    with torch.no_grad():
        out = model(views, Progress(0, 10, 20))
        d_out = model.discriminator_loss(views, Progress(0, 10, 20))
        pred = model.inpaint(masked)
        w = torch.zeros(16, 16)  # train.lua: 10 on the square's 1 px border, 1 inside it
        w[top:top + side, top:top + side] = c.overlap_weight
        w[top + 1:top + side - 1, top + 1:top + side - 1] = 1.0
        rec = (w * (pred - x) ** 2).sum() / (16 * side * side)
        crop = (..., slice(top, top + side), slice(top, top + side))
        adv = -F.logsigmoid(model.discriminator(pred[crop])).mean()
        d_real, d_fake = model.discriminator(x[crop]), model.discriminator(pred[crop])
    assert math.isclose(float(out.loss), 0.999 * float(rec) + 0.001 * float(adv), rel_tol=1e-4)
    assert torch.isclose(out.metrics["g_adv"], adv, rtol=1e-4)
    direct = -F.logsigmoid(d_real).mean() - F.logsigmoid(-d_fake).mean()
    assert torch.isclose(d_out.loss, direct, rtol=1e-4)
    inner = hole.expand_as(x) > 0
    assert torch.isclose(out.metrics["l2"], ((pred - x)[inner] ** 2).mean(), rtol=1e-4)


def test_a_two_set_step_moves_each_set_by_its_own_loss_only(trainer):
    model = trainer.model.train()
    assert [s.name for s in trainer.sets] == ["discriminator", "generator"]
    d, g = (s.settings for s in trainer.sets)  # train.lua: Adam, beta1 0.5, D at a tenth of G
    assert (d.lr, d.betas, g.lr) == (2e-4, [0.5, 0.999], 2e-3)
    views = inputs(trainer, 32, 2)
    d_params = {id(p) for p in model.discriminator.parameters()}
    # The discriminator's loss sees the generator's output detached: no gradient reaches it.
    model.zero_grad(set_to_none=True)
    model.discriminator_loss(views, Progress(0, 10, 20)).loss.backward()
    assert all(p.grad is None for p in model.parameters() if id(p) not in d_params)
    assert all(p.grad is not None for p in model.discriminator.parameters())
    model.zero_grad(set_to_none=True)
    for s in trainer.sets:
        mine = {id(p) for p in s.params}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        s.optimizer.param_groups[0]["lr"] = 1e-2  # large enough that every step shows
        backward_step(s.loss(views, Progress(0, 10, 20)).loss, s.optimizer, s.params)
        for n, p in model.named_parameters():
            moved = not torch.equal(before[n], p.detach())
            if id(p) not in mine:
                assert not moved, f"{s.name}'s step moved {n}"
        assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()
                   if id(p) in mine), s.name
    assert mine.isdisjoint(d_params)
