"""Random resized crop + flip in one resampling pass with per-image boxes.

Boxes are drawn as torchvision's RandomResizedCrop draws them; the resampling is one
``grid_sample`` when only upscaling can occur, else two batched matmuls with per-image
antialiased resampling matrices (see ``resized_crop``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def rand(g: torch.Generator, *shape: int, device: torch.device | str) -> Tensor:
    return torch.rand(shape, generator=g, device=device)


@functools.lru_cache(maxsize=64)
def const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor, made once per device.

    ``torch.tensor(..., device=cuda)`` is a blocking host-to-device copy; caching keeps it out
    of the training step.
    """
    return torch.tensor(values, dtype=dtype).to(device)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    g: torch.Generator,
    device: torch.device | str,
    attempts: int = 10,
) -> Tensor:
    """Draw ``n`` crop boxes ``[n, 4]``: float (top, left, h, w) in whole pixels.

    torchvision's RandomResizedCrop.get_params, vectorised: ``attempts`` candidates per image
    (area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``), the first that
    fits is kept, and an image with none falls back to a centre crop of the whole image with
    its aspect ratio clamped to ``ratio``.
    """
    device = torch.device(device)
    u = rand(g, n, 2 * attempts + 2, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, attempts : 2 * attempts])
    # torch.round, like Python's round in torchvision, rounds half to even
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax gives the first hit
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    top = torch.floor(u[:, -2] * (height - h + 1)).clamp_(max=height - h)
    left = torch.floor(u[:, -1] * (width - w + 1)).clamp_(max=width - w)
    boxes = torch.stack([top, left, h, w], dim=1)

    # the fallback depends only on the image shape, so it is plain Python (no host sync)
    fw, fh = width, height
    if width / height < min(ratio):
        fh = int(round(width / min(ratio)))
    elif width / height > max(ratio):
        fw = int(round(height * max(ratio)))
    fallback = const(((height - fh) // 2, (width - fw) // 2, fh, fw), device, torch.float32)
    return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback)


def draw_flips(n: int, p: float, g: torch.Generator, device: torch.device | str) -> Tensor:
    """``[n]`` bool, True with probability ``p``."""
    return rand(g, n, device=device) < p


def _output_positions(start: Tensor, length: Tensor, size: int, flip: Tensor | None) -> Tensor:
    # Centres of the ``size`` output pixels of each crop, in input pixel indices (pixel k
    # covers [k - 0.5, k + 0.5]), [B, size]. Mirroring the output order flips the view.
    u = torch.arange(size, device=start.device, dtype=torch.float32)
    if flip is not None:
        u = torch.where(flip[:, None], size - 1 - u, u)
    return start[:, None] + (u + 0.5) * (length / size)[:, None] - 0.5


def resample_matrix(start: Tensor, length: Tensor, size: int, n_in: int,
                    flip: Tensor | None = None) -> Tensor:
    """Per-image 1-D resampling matrices ``[B, size, n_in]`` for crops along one axis.

    Row ``u`` holds the weights that torchvision's antialiased bilinear resize gives output
    pixel ``u`` of the crop ``[start, start + length)``: a triangle filter widened by the
    downscaling factor, restricted to the crop and renormalised (which is also how the crop's
    edge pixels are clamped).
    """
    centre = _output_positions(start, length, size, flip)
    support = (length / size).clamp(min=1.0)[:, None, None]
    k = torch.arange(n_in, device=start.device, dtype=torch.float32)
    wgt = (1 - (centre[:, :, None] - k).abs() / support).clamp_(min=0)
    wgt = wgt * ((k >= start[:, None, None]) & (k < (start + length)[:, None, None]))
    return wgt / wgt.sum(dim=2, keepdim=True)


def _sample_grid_axis(start: Tensor, length: Tensor, size: int, n_in: int,
                      flip: Tensor | None) -> Tensor:
    # grid_sample coordinates (align_corners=False) of the output pixels, clamped to the crop
    # as torchvision clamps at the edges of the cropped image before resizing it
    pos = _output_positions(start, length, size, flip)
    pos = torch.maximum(torch.minimum(pos, (start + length - 1)[:, None]), start[:, None])
    return (2 * pos + 1) / n_in - 1


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None,
                 value_scale: float = 1.0, method: str = "auto") -> Tensor:
    """Crop each image to its box (top, left, h, w), resize to ``size`` x ``size``, flip.

    Same result as torchvision's ``resized_crop`` (bilinear, antialias=True) followed by
    ``horizontal_flip`` where ``flip`` ([B] bool) is set. ``x`` may be uint8: pass
    ``value_scale=1/255`` to land in [0, 1]. Returns float32.

    When no box can be larger than the output (images no bigger than ``size``, the usual
    case for CIFAR or STL views) antialiasing never applies and one ``grid_sample`` with
    per-image coordinates does the work in O(size^2) per channel. Otherwise the separable
    antialiased resize is two batched matmuls with per-image matrices, ``Ry @ x @ Rx^T``,
    O(size * H * W) per channel but exact for downscaling too. ``method`` ("auto", "sample"
    or "matrix") forces one of the two.
    """
    if method not in ("auto", "sample", "matrix"):
        raise ValueError(f"resized_crop method must be auto, sample or matrix, not {method!r}")
    b, c, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    top, left, bh, bw = boxes.unbind(dim=1)
    x = x.to(torch.float32)
    if method == "sample" or (method == "auto" and h <= size and w <= size):
        gx = _sample_grid_axis(left, bw, size, w, flip)
        gy = _sample_grid_axis(top, bh, size, h, None)
        grid = torch.stack([gx[:, None, :].expand(b, size, size),
                            gy[:, :, None].expand(b, size, size)], dim=-1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.mul_(value_scale) if value_scale != 1.0 else out
    ry = resample_matrix(top, bh, size, h).mul_(value_scale)
    rx = resample_matrix(left, bw, size, w, flip)
    cols = torch.bmm(x.reshape(b, c * h, w), rx.transpose(1, 2))  # [B, C*H, size]
    return torch.matmul(ry.unsqueeze(1), cols.view(b, c, h, size))  # [B, C, size, size]


def random_resized_crop(x: Tensor, size: int, scale: Sequence[float], ratio: Sequence[float],
                        flip_p: float, g: torch.Generator, value_scale: float = 1.0) -> Tensor:
    """Random resized crop (``sample_crop_boxes``) and horizontal flip with probability
    ``flip_p``, in one resampling pass; ``value_scale`` as in ``resized_crop``."""
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, scale, ratio, g, x.device)
    return resized_crop(x, boxes, size, draw_flips(b, flip_p, g, x.device), value_scale)
