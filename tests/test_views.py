"""Tests for selfsup.views: batched per-image augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.views import ViewConfig, build_view_set, build_views, byol, eval_transform, ops, simclr

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def smooth_images(b: int = 8, c: int = 3, size: int = 32) -> torch.Tensor:
    # colourful but smooth, so that crops and colour changes are easy to tell apart
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    chans = [xx, yy, (xx + yy) / 2][:c]
    img = (torch.stack(chans) * 255).round().to(torch.uint8)
    return img.expand(b, c, size, size).contiguous()


# ----------------------------------------------------------------------------- views


def test_shapes_dtypes_and_normalisation():
    cfg = ViewConfig(n_views=3, size=24)
    out = build_views(cfg, MEAN, STD)(images(16), gen())
    assert len(out) == 3
    for v in out:
        assert v.shape == (16, 3, 24, 24) and v.dtype == torch.float32 and v.device.type == "cpu"
        assert v.is_contiguous()
    # pixels in [0, 1] map to [-mean/std, (1-mean)/std] per channel
    lo = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    for v in out:
        assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()


def test_identity_config_only_normalises():
    cfg = ViewConfig(n_views=1, scale=[1, 1], ratio=[1, 1], flip_p=0, jitter_p=0, gray_p=0)
    x = images(4)
    (v,) = build_views(cfg, MEAN, STD)(x, gen())
    torch.testing.assert_close(v, eval_transform(x, MEAN, STD), atol=2e-2, rtol=0)


def test_identity_config_downscaled_matches_eval_transform():
    # 48 -> 24: the crop takes the antialiased matrix path, like eval_transform's resize
    cfg = ViewConfig(n_views=2, size=24, scale=[1, 1], ratio=[1, 1], flip_p=0, jitter_p=0,
                     gray_p=0)
    x = images(4, h=48, w=48)
    for v in build_views(cfg, MEAN, STD)(x, gen()):
        torch.testing.assert_close(v, eval_transform(x, MEAN, STD, size=24), atol=1e-4, rtol=0)


def test_presets_build_and_run():
    x = images(4, h=40, w=40)
    assert len(build_views(simclr(32), MEAN, STD)(x, gen())) == 2
    big = simclr(224)
    assert big.blur_p == 0.5 and big.brightness == 0.8
    v1, v2 = byol(32)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    out = build_view_set([v1, v2], MEAN, STD)(x, gen())
    assert [tuple(v.shape) for v in out] == [(4, 3, 32, 32)] * 2


def test_every_image_gets_its_own_draw():
    x = smooth_images(64)  # 64 identical images
    v1, v2 = build_views(ViewConfig(), MEAN, STD)(x, gen())
    flat = v1.flatten(1)
    dists = torch.cdist(flat, flat)
    off_diag = dists[~torch.eye(64, dtype=torch.bool)]
    assert (off_diag > 1e-3).all(), "two images in one batch got the same view"
    assert ((v1 - v2).flatten(1).abs().amax(1) > 1e-3).all(), "views of an image coincide"


# the older random ops, and everything at once
SEEDED_CONFIGS = [{"blur_p": 0.5, "solarize_p": 0.3},
                  {"blur_p": 0.5, "solarize_p": 0.3, "rotate_p": 0.5, "sobel_p": 0.3,
                   "noise_p": 0.5, "cutout_p": 0.5}]


@pytest.mark.parametrize("kw", SEEDED_CONFIGS)
def test_seed_fixes_every_draw(kw):
    x = images(32)
    views = build_views(ViewConfig(**kw), MEAN, STD)
    a, b, c = views(x, gen(1)), views(x, gen(1)), views(x, gen(2))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("kw", SEEDED_CONFIGS)
def test_draws_do_not_depend_on_cpu_chunking(kw):
    x = images(20)
    views = build_views(ViewConfig(n_views=3, **kw), MEAN, STD)
    whole = views(x, gen(5))
    views.cpu_chunk_pixels = 7 * 32 * 32  # chunks that straddle the views
    chunked = views(x, gen(5))
    for u, v in zip(whole, chunked):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=0)


def test_one_channel_input():
    x = images(8, c=1)
    out = build_views(ViewConfig(blur_p=0.5, solarize_p=0.5), [0.5], [0.25])(x, gen())
    assert [tuple(v.shape) for v in out] == [(8, 1, 32, 32)] * 2
    assert eval_transform(x, [0.5], [0.25]).shape == (8, 1, 32, 32)


def test_gray_probability_is_respected():
    cfg = ViewConfig(n_views=1, jitter_p=0, gray_p=0.2, flip_p=0)
    x = images(2000, h=8, w=8)
    (v,) = build_views(cfg, [0.5], [0.5])(x, gen())
    gray = (v.amax(1) - v.amin(1)).flatten(1).amax(1) < 1e-6
    # binomial sd = sqrt(2000 * 0.2 * 0.8) ~ 18; allow 4 sd
    assert abs(gray.sum().item() - 400) < 72


def test_bad_inputs_give_clear_errors():
    views = build_views(ViewConfig(), MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        views(torch.rand(2, 3, 32, 32), gen())
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(scale=[0.5, 0.1])
    with pytest.raises(ValueError, match="gray_p"):
        build_views({"gray_p": 1.5}, MEAN, STD)
    with pytest.raises(Exception, match="bogus"):
        build_views({"bogus": 1}, MEAN, STD)


def test_omegaconf_structured_config():
    from omegaconf import OmegaConf

    base = OmegaConf.structured(ViewConfig)
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(["size=16", "scale=[0.2,1.0]"]))
    views = build_views(cfg, MEAN, STD)
    assert views.cfg.scale == [0.2, 1.0]
    assert views(images(2), gen())[0].shape == (2, 3, 16, 16)


def test_view_set_concatenates_parts():
    cfgs = [ViewConfig(n_views=2, size=32), ViewConfig(n_views=3, size=16, scale=[0.05, 0.4])]
    out = build_view_set(cfgs, MEAN, STD)(images(4), gen())
    assert [v.shape[-1] for v in out] == [32, 32, 16, 16, 16]


def test_eval_transform_is_deterministic_and_normalised():
    x = images(4)
    a, b = eval_transform(x, MEAN, STD), eval_transform(x, MEAN, STD)
    assert torch.equal(a, b)
    expect = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1)
    torch.testing.assert_close(a, expect)
    assert eval_transform(x, MEAN, STD, size=32).shape == (4, 3, 32, 32)
    assert eval_transform(x, MEAN, STD, size=16).shape == (4, 3, 16, 16)


# ----------------------------------------------------------------------------- crop


def test_crop_boxes_follow_scale_and_ratio():
    boxes = ops.sample_crop_boxes(4000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen(), "cpu")
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (top + h <= 32).all()
    assert (left >= 0).all() and (left + w <= 32).all()
    assert torch.equal(boxes, boxes.round())
    area = h * w / 1024
    assert area.min() >= 0.05 and area.max() <= 1.0
    # rounding to whole pixels blurs the ratio bounds by about a pixel
    assert (w / h).min() > 0.6 and (w / h).max() < 1.6
    assert 0.4 < area.mean() < 0.6  # uniform area in [0.08, 1], lowered by rejections


def test_crop_fallback_is_central_crop_with_clamped_ratio():
    # a 10 x 40 image cannot host a crop of ratio in [1, 1] with area >= 0.9 -> fallback
    boxes = ops.sample_crop_boxes(5, 10, 40, (0.9, 1.0), (1.0, 1.0), gen(), "cpu")
    assert torch.equal(boxes, torch.tensor([[0.0, 15, 10, 10]] * 5))


@pytest.mark.parametrize("method", ["sample", "matrix"])
def test_crop_identity_and_exact_flip(method):
    x = images(6).float() / 255
    full = torch.tensor([[0.0, 0, 32, 32]] * 6)
    torch.testing.assert_close(ops.resized_crop(x, full, 32, method=method), x)
    flip = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(ops.resized_crop(x, full, 32, flip, method=method), x.flip(-1))


def test_random_crop_identity_and_flip():
    x = images(6)
    y = ops.random_resized_crop(x, 32, (1, 1), (1, 1), 1.0, gen(), value_scale=1 / 255)
    torch.testing.assert_close(y, x.flip(-1).float() / 255)
    z = ops.random_resized_crop(x, 32, (1, 1), (1, 1), 0.0, gen(), value_scale=1 / 255)
    torch.testing.assert_close(z, x.float() / 255)


@pytest.mark.parametrize("box,size", [((3, 5, 10, 14), 32), ((0, 0, 32, 32), 12),
                                      ((4, 2, 25, 19), 8), ((7, 9, 13, 13), 13),
                                      ((0, 20, 32, 12), 32)])
@pytest.mark.parametrize("method", ["auto", "sample", "matrix"])
def test_crop_matches_torch_antialiased_resize(box, size, method):
    # torchvision's resized_crop on tensors = slice, then interpolate(antialias=True)
    x = images(2).float() / 255
    t, l, h, w = box
    if method == "sample" and (h > size or w > size):
        pytest.skip("grid sampling does not antialias downscaled crops")
    ref = F.interpolate(x[:, :, t:t + h, l:l + w], size=(size, size), mode="bilinear",
                        antialias=True, align_corners=False)
    boxes = torch.tensor([box] * 2, dtype=torch.float32)
    out = ops.resized_crop(x, boxes, size, method=method)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    flipped = ops.resized_crop(x, boxes, size, torch.tensor([True, False]), method=method)
    torch.testing.assert_close(flipped[0], ref[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[1], ref[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- colour


def hsv_reference_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision's documented adjust_hue: RGB -> HSV, h = (h + factor) mod 1, HSV -> RGB
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    cr = maxc - minc
    safe = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = torch.remainder(h / 6 + factor.view(-1, 1, 1), 1.0)
    s = torch.where(maxc == 0, torch.zeros_like(cr), cr / torch.where(maxc == 0, 1, maxc))
    v = maxc
    i = torch.floor(h * 6)
    f = h * 6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(table):
        m = i == k
        out[:, 0][m], out[:, 1][m], out[:, 2][m] = rr[m], gg[m], bb[m]
    return out


def test_hue_matches_hsv_round_trip():
    x = torch.rand(16, 3, 8, 8, generator=gen())
    x[0] = 0.5  # grey image
    x[1, :, :4] = x[1, :1, :4]  # grey pixels
    x[2, 1] = x[2, 0]  # ties between R and G at the max
    factor = torch.linspace(-0.5, 0.5, 16)
    torch.testing.assert_close(ops.adjust_hue(x, factor), hsv_reference_hue(x, factor),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ops.adjust_hue(x, torch.zeros(16)), x, atol=1e-6, rtol=0)


def test_brightness_contrast_saturation_semantics():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    f = torch.tensor([0.0, 0.5, 1.0, 1.5])
    torch.testing.assert_close(ops.adjust_brightness(x, f), (x * f.view(-1, 1, 1, 1)).clamp(0, 1))
    gray = ops.rgb_to_gray(x)
    mean = gray.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    fv = f.view(-1, 1, 1, 1)
    torch.testing.assert_close(ops.adjust_contrast(x, f), (fv * x + (1 - fv) * mean).clamp(0, 1))
    torch.testing.assert_close(ops.adjust_saturation(x, f), (fv * x + (1 - fv) * gray).clamp(0, 1))
    # factor 1 leaves images exactly unchanged
    one = torch.ones(4)
    for op in (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation):
        assert torch.equal(op(x, one), x)


def test_jitter_with_zero_strength_or_zero_p_is_identity():
    x = torch.rand(8, 3, 16, 16, generator=gen())
    assert torch.equal(ops.color_jitter(x, 0, 0, 0, 0, 1.0, gen()), x)
    assert torch.equal(ops.color_jitter(x, 0.4, 0.4, 0.4, 0.1, 0.0, gen()), x)
    jittered = ops.color_jitter(x, 0.4, 0.4, 0.4, 0.1, 1.0, gen())
    assert ((jittered - x).flatten(1).abs().amax(1) > 1e-3).all()


def test_jitter_factor_ranges_and_probability():
    f = ops.draw_jitter(4000, 0.4, 0.3, 1.5, 0.1, 0.8, gen(), "cpu")
    picked = (f != torch.tensor([1.0, 1, 1, 0])).any(1)
    assert abs(picked.float().mean().item() - 0.8) < 0.03
    p = f[picked]
    assert p[:, 0].min() >= 0.6 and p[:, 0].max() <= 1.4
    assert p[:, 1].min() >= 0.7 and p[:, 1].max() <= 1.3
    assert p[:, 2].min() >= 0.0 and p[:, 2].max() <= 2.5  # max(0, 1 - s)
    assert p[:, 3].min() >= -0.1 and p[:, 3].max() <= 0.1


def test_grayscale_uses_luma_weights():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    out = ops.to_grayscale(x, torch.tensor([1.0, 0, 1, 0]))
    luma = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for i in (0, 2):
        for c in range(3):
            torch.testing.assert_close(out[i, c], luma[i])
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])
    assert torch.equal(ops.random_grayscale(x, 1.0, gen())[:, 0], ops.rgb_to_gray(x)[:, 0])


def test_one_channel_colour_ops_are_safe():
    x = torch.rand(4, 1, 8, 8, generator=gen())
    assert torch.equal(ops.adjust_saturation(x, torch.full((4,), 0.2)), x)
    assert torch.equal(ops.adjust_hue(x, torch.full((4,), 0.3)), x)
    assert torch.equal(ops.random_grayscale(x, 1.0, gen()), x)
    y = ops.color_jitter(x, 0.4, 0.4, 0.4, 0.1, 1.0, gen())
    assert y.shape == x.shape and (y >= 0).all() and (y <= 1).all()


def test_solarize_inverts_above_threshold():
    x = torch.linspace(0, 1, 64).view(1, 1, 8, 8).repeat(3, 3, 1, 1)
    out = ops.solarize_with(x, torch.tensor([1.0, 0.0, 1.0]))
    expect = torch.where(x >= 0.5, 1 - x, x)
    torch.testing.assert_close(out[0], expect[0])
    assert torch.equal(out[1], x[1])
    assert torch.equal(ops.solarize(x, 0.0, gen()), x)
    assert torch.equal(ops.solarize(x, 1.0, gen()), torch.where(x >= 0.5, 1 - x, x))


# ----------------------------------------------------------------------------- blur


def test_blur_keeps_constants_and_smooths():
    const = torch.full((2, 3, 16, 16), 0.3)
    out = ops.blur(const, torch.tensor([1.0, 2.0]), 7)
    torch.testing.assert_close(out, const)
    noise = torch.rand(2, 3, 16, 16, generator=gen())
    smooth = ops.blur(noise, torch.tensor([1.0, 2.0]), 7)
    assert smooth.var() < noise.var() / 3
    assert smooth[1].var() < smooth[0].var()  # larger sigma, smoother
    torch.testing.assert_close(smooth.mean(), noise.mean(), atol=0.01, rtol=0)
    assert torch.equal(ops.blur(noise, torch.zeros(2), 7), noise)  # sigma 0: untouched


def test_blur_matches_explicit_gaussian():
    x = torch.rand(1, 1, 12, 12, generator=gen())
    sigma, k = 1.3, 5
    t = torch.arange(k) - k // 2
    kern = torch.exp(-0.5 * (t / sigma) ** 2)
    kern = kern / kern.sum()
    ref = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), (kern[:, None] * kern[None])[None, None])
    torch.testing.assert_close(ops.blur(x, torch.tensor([sigma]), k), ref, atol=1e-6, rtol=0)


def test_blur_probability_and_default_kernel():
    assert ops.default_blur_kernel(224) == 23 and ops.default_blur_kernel(32) == 3
    sigma = ops.draw_blur_sigma(4000, (0.1, 2.0), 0.5, gen(), "cpu")
    on = sigma > 0
    assert abs(on.float().mean().item() - 0.5) < 0.04
    assert sigma[on].min() >= 0.1 and sigma[on].max() <= 2.0


def test_normalize():
    x = torch.rand(2, 3, 4, 4, generator=gen())
    out = ops.normalize(x, MEAN, STD)
    ref = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError):
        ops.normalize(x, (0.5, 0.5), (0.2, 0.2))


# ------------------------------------------------------------- rotation, Sobel, noise, cutout


def plain_config(**kw) -> ViewConfig:
    # identity crop and no colour ops: with mean 0 and std 1 the views are the images in [0, 1]
    return ViewConfig(**{"scale": [1, 1], "ratio": [1, 1], "flip_p": 0, "jitter_p": 0,
                         "gray_p": 0, **kw})


def sobel_reference(img: torch.Tensor) -> torch.Tensor:
    # scipy's Sobel filters on the luma, mode "nearest" being replicate padding
    from scipy import ndimage

    a = img.double().numpy()
    luma = a[0] if len(a) == 1 else 0.2989 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    gy, gx = (ndimage.sobel(luma, axis=k, mode="nearest") for k in (0, 1))
    return torch.from_numpy(np.hypot(gx, gy) / math.sqrt(20)).float().expand_as(img)


def cutout_reference(img: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    top, left, bottom, right = (int(v) for v in hole)
    out = img.clone()
    out[:, top:bottom, left:right] = 0.0
    return out


# op -> (reference for image i of a plain view under the drawn params, tolerance)
REFERENCES = {
    "rotate_p": (lambda img, prm, i: torch.rot90(img, int(prm["turns"][i]), dims=(1, 2)), 0.0),
    "cutout_p": (lambda img, prm, i: cutout_reference(img, prm["cutout"][i]), 0.0),
    "noise_p": (lambda img, prm, i: (img + prm["noise_std"][i] * prm["noise"][i]).clamp(0, 1),
                1e-6),
    "sobel_p": (lambda img, prm, i: sobel_reference(img) if prm["sobel"][i] else img, 1e-5),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", sorted(REFERENCES))
def test_new_ops_match_a_per_image_reference(op, channels):
    x = images(16, c=channels)
    views = build_views(plain_config(**{op: 0.7}), [0.0], [1.0])
    params = views.draw(32, 32, 32, gen(3), "cpu", channels)  # what the call below draws
    out = torch.cat(views(x, gen(3)))
    plain = torch.cat(build_views(plain_config(), [0.0], [1.0])(x, gen(3)))
    reference, tol = REFERENCES[op]
    for i in range(32):
        torch.testing.assert_close(out[i], reference(plain[i], params, i), atol=tol, rtol=0)


@pytest.mark.parametrize("op", sorted(REFERENCES))
def test_new_ops_pick_each_image_with_their_probability(op):
    x = images(1000, h=8, w=8)
    (out,) = build_views(plain_config(n_views=1, size=8, **{op: 0.5}), [0.0], [1.0])(x, gen(1))
    (plain,) = build_views(plain_config(n_views=1, size=8), [0.0], [1.0])(x, gen(1))
    changed = (out - plain).flatten(1).abs().amax(1) > 1e-6
    # binomial sd = sqrt(1000 / 4) ~ 16; allow 4 sd
    assert abs(changed.sum().item() - 500) < 64


@pytest.mark.parametrize("op,distinct", [("rotate_p", 3), ("cutout_p", 32), ("noise_p", 64)])
def test_new_ops_draw_per_image(op, distinct):
    x = smooth_images(64)  # 64 identical images
    (out,) = build_views(plain_config(n_views=1, **{op: 1.0}), [0.0], [1.0])(x, gen())
    assert len(torch.unique(out.flatten(1), dim=0)) >= distinct


def test_new_ops_off_by_default_draw_nothing():
    views = build_views(ViewConfig(), MEAN, STD)
    assert set(views.draw(4, 32, 32, gen(), "cpu", 3)) == {"boxes", "flip", "jitter", "gray"}
    # other ranges, probability 0: the same views from the same seed as the defaults
    off = ViewConfig(noise_std=[0.3, 0.4], cutout_size=[0.1, 0.2], cutout_value=0.5)
    x = images(16)
    for u, v in zip(views(x, gen(4)), build_views(off, MEAN, STD)(x, gen(4))):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kw", [{"cutout_size": [0.5, 0.2]}, {"cutout_size": [0.0, 0.5]},
                                {"cutout_size": [0.5, 1.5]}, {"cutout_size": [0.5]},
                                {"noise_std": [-0.1, 0.2]}, {"noise_std": [0.3, 0.2]},
                                {"cutout_value": 1.5}, {"rotate_p": 1.5}, {"sobel_p": -0.1},
                                {"noise_p": 2.0}, {"cutout_p": 1.1}])
def test_new_settings_are_validated(kw):
    (key,) = kw
    with pytest.raises(ValueError, match=rf"views\.{key}="):
        ViewConfig(**kw)
    with pytest.raises(ValueError, match=rf"views\.{key}="):
        build_views(kw, MEAN, STD)


def test_rotate90_equals_rot90_counter_clockwise():
    x = torch.rand(8, 3, 6, 6, generator=gen())
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = ops.rotate90(x, turns)
    for i in range(8):
        assert torch.equal(out[i], torch.rot90(x[i], int(turns[i]), dims=(1, 2)))
    # counter-clockwise as displayed: the top-right pixel moves to the top left
    square = torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)
    assert ops.rotate90(square, torch.tensor([1])).flatten().tolist() == [2, 4, 1, 3]
    with pytest.raises(ValueError, match="square"):
        ops.rotate90(torch.rand(2, 3, 4, 6), torch.zeros(2, dtype=torch.long))


def test_rotation_draws():
    turns = ops.draw_rotations(6000, 0.5, gen(), "cpu")
    counts = torch.bincount(turns, minlength=4).tolist()
    assert abs(counts[0] - 3000) < 155  # 4 sd
    assert all(abs(c - 1000) < 105 for c in counts[1:])  # 1, 2, 3 equally likely


def test_cutout_holes_follow_devries_taylor():
    # per image, in plain Python from the same uniforms: a side of round(s * 32) pixels at a
    # uniformly drawn centre pixel, from y - side // 2 (inclusive), clipped to the image
    n, lo, hi, p = 500, 0.25, 0.5, 0.8
    holes = ops.draw_cutout(n, 32, 32, (lo, hi), p, gen(7), "cpu")
    u = torch.rand(n, 4, generator=gen(7)).tolist()
    for hole, (us, uy, ux, up) in zip(holes.tolist(), u):
        side = max(1, round((lo + (hi - lo) * us) * 32))
        y, x = int(uy * 32) - side // 2, int(ux * 32) - side // 2
        box = [max(y, 0), max(x, 0), min(y + side, 32), min(x + side, 32)] if up < p else [0] * 4
        assert hole == box
    # a non-square image: the side is a fraction of the shorter one, the hole stays inside
    holes = ops.draw_cutout(2000, 20, 40, (0.5, 0.5), 1.0, gen(), "cpu")
    top, left, bottom, right = holes.unbind(1)
    assert (top >= 0).all() and (bottom <= 20).all() and (left >= 0).all() and (right <= 40).all()
    assert (bottom - top).max() == 10 and (right - left).max() == 10 and (bottom > top).all()


def test_cutout_fills_with_the_value_and_leaves_the_rest():
    x = torch.rand(3, 3, 8, 8, generator=gen())
    holes = torch.tensor([[2.0, 1, 5, 4], [0, 0, 0, 0], [6, 6, 8, 8]])
    out = ops.cutout_with(x, holes, value=0.25)
    for i, (t, l, b, r) in enumerate(holes.long().tolist()):
        expect = x[i].clone()
        expect[:, t:b, l:r] = 0.25
        assert torch.equal(out[i], expect)


def test_noise_draws():
    std, noise = ops.draw_noise(4000, 3, 4, 4, (0.05, 0.2), 0.5, gen(), "cpu")
    assert noise.shape == (4000, 3, 4, 4)
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    on = std > 0
    assert abs(on.float().mean().item() - 0.5) < 0.04
    assert std[on].min() >= 0.05 and std[on].max() <= 0.2


def test_sobel_scale_and_flat_border():
    # the largest magnitude on [0, 1] images, gx = 4 and gy = 2, maps to exactly 1
    corner = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 1, 1]]).view(1, 1, 3, 3)
    assert ops.sobel_with(corner, torch.ones(1))[0, 0, 1, 1].item() == pytest.approx(1.0)
    # replicate padding: a flat image has no edges, the frame included
    flat = torch.full((2, 3, 5, 5), 0.7)
    torch.testing.assert_close(ops.sobel_with(flat, torch.ones(2)), torch.zeros(2, 3, 5, 5),
                               atol=1e-6, rtol=0)
    x = torch.rand(2, 3, 5, 5, generator=gen())
    out = ops.sobel_with(x, torch.tensor([0.0, 1.0]))
    assert torch.equal(out[0], x[0]) and out[1].min() >= 0 and out[1].max() <= 1
    assert torch.equal(out[1, 0], out[1, 2])  # the same in every channel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu_with_a_gpu_generator():
    x = images(64).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    cfg = ViewConfig(blur_p=0.5, solarize_p=0.2, rotate_p=0.5, sobel_p=0.2, noise_p=0.5,
                     cutout_p=0.5)
    out = build_views(cfg, MEAN, STD)(x, g)
    assert all(v.device == x.device and v.shape == (64, 3, 32, 32) for v in out)
    with pytest.raises(ValueError, match="generator"):
        build_views(ViewConfig(), MEAN, STD)(x, gen())
    assert math.isfinite(out[0].sum().item())
