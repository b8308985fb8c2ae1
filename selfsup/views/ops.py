"""Batched, per-image random augmentation ops.

Every op takes a float batch ``x: [B, C, H, W]`` with values in [0, 1] (C = 1 or 3) and a
``torch.Generator`` on the batch's device, draws one independent set of parameters per image
and returns a new tensor (inputs are never modified). Parameters are drawn as tensors on the
batch's device, so no op syncs with the host and a seeded generator fixes every draw.
Probabilities ``p`` apply per image. Semantics follow torchvision's tensor transforms unless a
comment says otherwise.

Each random op is a ``draw_*`` function (parameters only) plus a deterministic kernel
(``resized_crop``, ``rotate90``, ``jitter``, ``to_grayscale``, ``blur``, ``solarize_with``,
``sobel_with``, ``add_noise``, ``cutout_with``); ``Views`` uses the two halves to draw once for
a whole batch and then work through it in cache-sized chunks.

The kernels are written for eager speed on CPU as much as on GPU: in-place updates of fresh
buffers, float masks and ``lerp`` instead of boolean ``where`` (boolean elementwise kernels
are several times slower on CPU), and no channel reductions with indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .crop import (  # noqa: F401  (re-exported: ops is the one place to find an op)
    const,
    draw_flips,
    rand,
    random_resized_crop,
    resample_matrix,
    resized_crop,
    sample_crop_boxes,
)

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale
LUMA = (0.2989, 0.587, 0.114)


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    # [B] -> [B, 1, 1, 1], broadcastable against the batch
    return v.to(x.dtype).view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- rotation


def draw_rotations(n: int, p: float, g: torch.Generator, device: torch.device | str) -> Tensor:
    """``[n]`` int64 quarter turns: with probability ``p`` one of 1, 2, 3 (90, 180, 270
    degrees) uniformly, else 0."""
    u = rand(g, n, 2, device=device)
    turns = (u[:, 0] * 3).floor_().clamp_(max=2).add_(1)  # the clamp guards against rounding
    return (turns * (u[:, 1] < p)).long()


def rotate90(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate each square image by its ``turns`` ([B], 0 to 3) quarter turns counter-clockwise
    (as displayed, row 0 at the top): exactly ``torch.rot90(x[i], turns[i], dims=(1, 2))``.

    Two masked passes over the batch, no per-image loop: a half turn (both flips) where
    ``turns >= 2``, then a quarter turn where ``turns`` is odd. ``lerp`` with weights 0 and 1
    copies exactly, and is several times faster on CPU than a gather of every pixel.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {tuple(x.shape[-2:])}")
    half = torch.lerp(x, x.flip((2, 3)), _per_image(turns >= 2, x))
    return torch.lerp(half, torch.rot90(half, 1, (2, 3)), _per_image(turns % 2, x))


# --------------------------------------------------------------------------- colour kernels


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` (ITU-R 601-2 weights); a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return torch.add(r * LUMA[0], g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Multiply each image by its factor ([B]), clamped to [0, 1]."""
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with the mean of its luma (factor 0: flat grey, 1: unchanged)."""
    mean = rgb_to_gray(x.mean(dim=(2, 3), keepdim=True))  # luma is linear: mean of luma
    f = _per_image(factor, x)
    # f * x + (1 - f) * mean, exact at f = 1; lerp with two per-image operands is slow on CPU
    return (x * f).add_(mean * (1 - f)).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its luma (factor 0: grayscale); no-op on 1-channel images."""
    if x.shape[1] == 1:
        return x.clone()
    return torch.lerp(rgb_to_gray(x), x, _per_image(factor, x)).clamp_(0, 1)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotate each image's HSV hue by its factor ([B], in turns); no-op on 1 channel.

    Equals torchvision's RGB -> HSV -> shift -> RGB round trip without building the HSV
    image: a hue shift keeps value (max) and chroma (max - min), and HSV -> RGB has the
    closed form ``channel = max - chroma * clamp(min(k, 4 - k), 0, 1)``, with
    ``k = (n + hue6) mod 6`` and n = 5, 3, 1 for R, G, B (hue6: hue in sixths of a turn).
    """
    if x.shape[1] == 1:
        return x.clone()
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    chroma = torch.sub(maxc, minc, out=minc)
    inv = chroma.clamp(min=1e-12).reciprocal_()  # grey pixels have a zero numerator anyway
    # Which channel holds the max, as 0/1 floats (sign(c - max) is 0 or -1); ties go to R,
    # then G, as in torchvision's _rgb2hsv.
    is_r = (r - maxc).sign_().add_(1)
    is_g = (g - maxc).sign_().add_(1).mul_(1 - is_r)
    is_b = (1 - is_r).sub_(is_g)
    hue6 = (g - b).mul_(is_r).addcmul_(b - r, is_g).addcmul_(r - g, is_b).mul_(inv)
    hue6.add_(is_g, alpha=2).add_(is_b, alpha=4).add_(6 * factor.to(x.dtype).view(-1, 1, 1))
    k = hue6.unsqueeze(1) + const((5.0, 3.0, 1.0), x.device, x.dtype).view(1, 3, 1, 1)
    k.sub_(torch.div(k, 6).floor_(), alpha=6)  # mod 6; torch.remainder is slow on CPU
    ramp = torch.rsub(k, 4)
    torch.minimum(ramp, k, out=ramp).clamp_(0, 1)
    return torch.sub(maxc.unsqueeze(1), ramp.mul_(chroma.unsqueeze(1)), out=ramp)


def draw_jitter(n: int, brightness: float, contrast: float, saturation: float, hue: float,
                p: float, g: torch.Generator, device: torch.device | str) -> Tensor:
    """Per-image jitter factors ``[n, 4]`` (brightness, contrast, saturation, hue).

    As torchvision's ColorJitter: the first three uniform in [max(0, 1 - s), 1 + s], hue in
    [-hue, hue]; images not picked (probability ``1 - p``) get the identity (1, 1, 1, 0).
    """
    u = rand(g, n, 5, device=device)
    lo = (max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue)
    span = (1 + brightness - lo[0], 1 + contrast - lo[1], 1 + saturation - lo[2], 2 * hue)
    drawn = torch.addcmul(const(lo, u.device, u.dtype), u[:, :4], const(span, u.device, u.dtype))
    identity = const((1.0, 1.0, 1.0, 0.0), u.device, u.dtype).expand(n, 4)
    return torch.where(u[:, 4:] < p, drawn, identity)


def jitter(x: Tensor, factors: Tensor, enabled: Sequence[bool] = (True,) * 4) -> Tensor:
    """Apply ``draw_jitter`` factors in the fixed order brightness, contrast, saturation, hue.

    The order is fixed, as in SimCLR's ``color_jitter_nonrand``: torchvision permutes it once
    per call and SimCLR per image, but a per-image order costs four hue passes and a
    per-batch one needs the permutation on the host. ``enabled`` skips ops statically.
    """
    steps = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    out = x
    for i, (step, on) in enumerate(zip(steps, enabled)):
        if on and (i < 2 or x.shape[1] == 3):
            out = step(out, factors[:, i])
    return out if out is not x else x.clone()


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float, g: torch.Generator) -> Tensor:
    """With probability ``p`` per image, jitter brightness, contrast, saturation and hue
    (``draw_jitter`` then ``jitter``); zero strengths skip their op. Unpicked images come
    back unchanged (up to float rounding in the hue round trip)."""
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    if p <= 0 or not any(enabled):
        return x.clone()
    factors = draw_jitter(x.shape[0], brightness, contrast, saturation, hue, p, g, x.device)
    return jitter(x, factors, enabled)


def draw_mask(n: int, p: float, g: torch.Generator, device: torch.device | str) -> Tensor:
    """``[n]`` float, 1.0 with probability ``p`` and 0.0 otherwise."""
    return (rand(g, n, device=device) < p).float()


def to_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace every channel by the luma where ``mask`` ([B], 0/1) is 1; 1 channel: no-op."""
    if x.shape[1] == 1:
        return x.clone()
    return torch.lerp(x, rgb_to_gray(x), _per_image(mask, x))  # exact at weights 0 and 1


def random_grayscale(x: Tensor, p: float, g: torch.Generator) -> Tensor:
    """With probability ``p`` per image, convert to grayscale (luma in every channel)."""
    if x.shape[1] == 1 or p <= 0:
        return x.clone()
    return to_grayscale(x, draw_mask(x.shape[0], p, g, x.device))


def solarize_with(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Where ``mask`` ([B], 0/1) is 1, invert pixels at or above ``threshold``: x -> 1 - x."""
    # 0/1 step at x >= threshold without a boolean kernel (slow on CPU): for thresholds
    # above 2^-16, a nonzero float32 difference x - threshold is at least 2^-40 in size, so
    # scaling by 2^40 and adding 1 lands at <= 0 below the threshold and >= 1 at or above it
    above = (x - threshold).mul_(2.0**40).add_(1).clamp_(0, 1).mul_(_per_image(mask, x))
    return torch.lerp(x, torch.rsub(x, 1), above)


def solarize(x: Tensor, p: float, g: torch.Generator, threshold: float = 0.5) -> Tensor:
    """With probability ``p`` per image, solarize (BYOL: threshold 0.5 on [0, 1] images)."""
    return solarize_with(x, draw_mask(x.shape[0], p, g, x.device), threshold)


# --------------------------------------------------------------------------- blur


def default_blur_kernel(size: int) -> int:
    """SimCLR's kernel: 10 % of the image side, made odd (at least 3)."""
    return max(3, 2 * ((size // 10) // 2) + 1)


def draw_uniform(n: int, value_range: Sequence[float], p: float, g: torch.Generator,
                 device: torch.device | str) -> Tensor:
    """``[n]`` values uniform in ``value_range`` with probability ``p``, else 0."""
    u = rand(g, n, 2, device=device)
    lo, hi = float(value_range[0]), float(value_range[1])
    return (lo + (hi - lo) * u[:, 0]) * (u[:, 1] < p)


def draw_blur_sigma(n: int, sigma_range: Sequence[float], p: float, g: torch.Generator,
                    device: torch.device | str) -> Tensor:
    """``[n]`` sigmas uniform in ``sigma_range`` with probability ``p``, else 0 (no blur)."""
    return draw_uniform(n, sigma_range, p, g, device)


def blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-image ``sigma`` ([B]; 0 leaves an image exactly unchanged).

    Separable grouped convolution, one kernel per (image, channel), reflect padding as in
    torchvision's GaussianBlur.
    """
    b, c, h, w = x.shape
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel_size must be odd and positive, got {kernel_size}")
    radius = min(kernel_size // 2, h - 1, w - 1)  # reflect padding needs pad < side
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp(min=1e-6)[:, None]
    kern = torch.exp(-0.5 * (t / s) ** 2)  # sigma 0 underflows to an exact delta
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, k]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"),
                 kern[:, None, :, None], groups=b * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"),
                 kern[:, None, None, :], groups=b * c)
    return y.view(b, c, h, w)


def gaussian_blur(x: Tensor, sigma_range: Sequence[float], p: float, g: torch.Generator,
                  kernel_size: int | None = None) -> Tensor:
    """With probability ``p`` per image, blur with sigma uniform in ``sigma_range``;
    ``kernel_size`` defaults to ``default_blur_kernel`` of the image side."""
    if p <= 0:
        return x.clone()
    sigma = draw_blur_sigma(x.shape[0], sigma_range, p, g, x.device)
    return blur(x, sigma, kernel_size or default_blur_kernel(min(x.shape[-2:])))


# --------------------------------------------------------------------------- Sobel

# The largest gradient magnitude of a [0, 1] image under the 3x3 Sobel kernels: sqrt(20), at
# gx = 4 and gy = 2 (or the reverse). The bound 4 * sqrt(2) is out of reach: gx = gy = 4 needs
# the corner pixel they share to be both 0 and 1.
SOBEL_MAX = math.sqrt(20)


def sobel_with(x: Tensor, mask: Tensor) -> Tensor:
    """Where ``mask`` ([B], 0/1) is 1, replace every channel by the Sobel gradient magnitude
    of the luma, ``sqrt(gx^2 + gy^2) / SOBEL_MAX``, in [0, 1].

    The 3x3 Sobel kernels ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and its transpose, with
    replicate padding (the border continues flat, so the frame of the image shows no edge); a
    1-channel image is its own luma. Each kernel is applied in its separable form, a central
    difference along one axis and 1-2-1 smoothing along the other, as shifted slices: the
    same sums as ``F.conv2d`` with the 3x3 kernels, five times faster on CPU.
    """
    y = F.pad(rgb_to_gray(x), (1, 1, 1, 1), mode="replicate")  # [B, 1, H + 2, W + 2]
    dx = y[..., 2:] - y[..., :-2]  # [B, 1, H + 2, W]
    gx = (dx[:, :, :-2] + dx[:, :, 2:]).add_(dx[:, :, 1:-1], alpha=2)
    sx = (y[..., :-2] + y[..., 2:]).add_(y[..., 1:-1], alpha=2)
    gy = sx[:, :, 2:] - sx[:, :, :-2]
    mag = gx.square_().addcmul_(gy, gy).sqrt_().mul_(1 / SOBEL_MAX).clamp_(max=1)
    return torch.lerp(x, mag.expand_as(x), _per_image(mask, x))


# --------------------------------------------------------------------------- noise, cutout


def draw_noise(n: int, channels: int, height: int, width: int, std_range: Sequence[float],
               p: float, g: torch.Generator, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Per-image noise strengths ``[n]`` (uniform in ``std_range`` with probability ``p``,
    else 0) and the standard normal noise itself, ``[n, channels, height, width]``.

    The noise is drawn here, the size of the output, so that it does not depend on how the
    batch is later cut into chunks.
    """
    std = draw_uniform(n, std_range, p, g, device)
    return std, torch.randn((n, channels, height, width), generator=g, device=device)


def add_noise(x: Tensor, std: Tensor, noise: Tensor) -> Tensor:
    """``clamp(x + std_i * noise_i, 0, 1)`` per image, from ``draw_noise``; std 0: unchanged."""
    return torch.addcmul(x, noise, _per_image(std, x)).clamp_(0, 1)


def draw_cutout(n: int, height: int, width: int, side_range: Sequence[float], p: float,
                g: torch.Generator, device: torch.device | str) -> Tensor:
    """``[n, 4]`` float holes (top, left, bottom, right) as half-open pixel ranges.

    Cutout (DeVries & Taylor 2017): with probability ``p``, a square of side
    ``round(s * min(height, width))`` pixels (at least 1), ``s`` uniform in ``side_range``,
    centred on a pixel drawn uniformly over the image and clipped at the border, as in their
    code (so a hole near the edge is smaller); else an empty hole.
    """
    u = rand(g, n, 4, device=device)
    lo, hi = float(side_range[0]), float(side_range[1])
    side = torch.round((lo + (hi - lo) * u[:, 0]) * min(height, width)).clamp_(min=1)
    top = torch.floor(u[:, 1] * height).clamp_(max=height - 1) - torch.floor(side / 2)
    left = torch.floor(u[:, 2] * width).clamp_(max=width - 1) - torch.floor(side / 2)
    holes = torch.stack([top.clamp(min=0), left.clamp(min=0), (top + side).clamp(max=height),
                         (left + side).clamp(max=width)], dim=1)
    return holes * (u[:, 3:] < p)


def cutout_with(x: Tensor, holes: Tensor, value: float = 0.0) -> Tensor:
    """Fill each image's hole (``draw_cutout``'s [B, 4] top, left, bottom, right) with
    ``value`` in every channel; an empty hole leaves the image unchanged."""
    top, left, bottom, right = holes.to(x.dtype).unbind(dim=1)
    rows = torch.arange(x.shape[2], device=x.device, dtype=x.dtype)
    cols = torch.arange(x.shape[3], device=x.device, dtype=x.dtype)
    # [B, H] and [B, W] 0/1 (boolean kernels are fine at this size), their outer product
    in_rows = ((rows >= top[:, None]) & (rows < bottom[:, None])).to(x.dtype)
    in_cols = ((cols >= left[:, None]) & (cols < right[:, None])).to(x.dtype)
    hole = (in_rows[:, :, None] * in_cols[:, None, :]).unsqueeze(1)  # [B, 1, H, W]
    out = x * (1 - hole)
    return out.add_(hole, alpha=value) if value else out


# --------------------------------------------------------------------------- output


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float],
              out: Tensor | None = None) -> Tensor:
    """``(x - mean) / std`` per channel (a single mean/std entry serves every channel)."""
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    mean = [float(m) for m in mean] * (c // len(mean))
    std = [float(s) for s in std] * (c // len(std))
    # x * (1 / std) + (-mean / std); a broadcast addcmul is ~3x slower than this on CPU
    scale = const(tuple(1 / s for s in std), x.device, x.dtype).view(1, c, 1, 1)
    shift = const(tuple(-m / s for m, s in zip(mean, std)), x.device, x.dtype).view(1, c, 1, 1)
    return torch.mul(x, scale, out=out).add_(shift)
