"""Quantised colour for the colour-prediction methods (colorization, split-brain): the in-gamut ab
bins, soft encoding, the empirical prior and its rebalancing weights, the annealed mean, L bins,
and the small head that predicts a class per pixel at a quarter of the input's resolution.

Zhang, Isola, Efros 2016, "Colorful Image Colorization", https://arxiv.org/abs/1603.08511 §2.1-2.3;
the details the official code fixes are from richzhang/colorization,
resources/caffe_traininglayers.py and models/colorization_train_val_v2.prototxt.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.colour import srgb_to_lab


@functools.lru_cache(maxsize=4)
def require_input(backbone: nn.Module, wanted: str, method: str, why: str) -> None:
    """The colour methods' one check of what their encoder sees (backbone.input)."""
    got = getattr(backbone, "input", "rgb")
    if got != wanted:
        raise ValueError(f"method.name={method} needs backbone.input={wanted} ({why}); got "
                         f"backbone.input={got}")


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: int, samples: int) -> Tensor:
    # For a fixed ab the sRGB colours with it form a curve through the cube whose ends lie on the
    # cube's surface, so the six faces reach every ab the cube reaches: sampling them on a fine
    # grid finds every bin that holds an sRGB colour, far cheaper than the whole cube (the whole
    # cube at 64 levels finds no bin the faces at 256 miss).
    v = torch.linspace(0, 1, samples)
    uv = torch.stack(torch.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2)
    faces = []
    for c in range(3):
        rest = [i for i in range(3) if i != c]
        for value in (0.0, 1.0):
            f = torch.empty(len(uv), 3)
            f[:, rest], f[:, c] = uv, value
            faces.append(f)
    rgb = torch.cat(faces).T.reshape(1, 3, -1, 1)
    ab = srgb_to_lab(rgb)[0, 1:, :, 0].T  # [P, 2]
    q = torch.round(ab / grid).long()
    low = q.amin(0)
    q = q - low
    span = int(q[:, 1].max()) + 1
    key = torch.unique(q[:, 0] * span + q[:, 1])  # one integer per bin, sorted by a, then b
    return (torch.stack([key // span, key % span], 1) + low).float() * grid


def ab_bins(grid: float = 10, samples: int = 256) -> Tensor:
    """The in-gamut ab bins [Q, 2]: centres on the multiples of `grid`, each bin the square of side
    `grid` around its centre, kept where some sRGB colour's ab falls in it (§2.1: grid 10). Computed
    from the sRGB cube (its faces sampled at `samples` levels): 261 bins for grid 10, where the
    official pts_in_hull.npy has 313 (its extra bins lie on the gamut's edge; how they were chosen
    is not in the code). Sorted by a, then b; a float32 copy on the CPU."""
    return _gamut_bins(int(grid), samples).clone()


def soft_encode(ab: Tensor, centres: Tensor, k: int = 10, sigma: float = 5.0) -> Tensor:
    """ab: [B, 2, h, w] -> soft targets [B, Q, h, w]: each pixel spread over its k nearest bins
    with Gaussian weights exp(-d^2 / 2 sigma^2), normalised to sum 1 (§2.1; the official
    NNEncLayer takes k = 10 neighbours where the paper says 5, sigma 5)."""
    B, _, h, w = ab.shape
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    d2 = torch.cdist(pts, centres.float()).square()  # [P, Q]
    near, idx = d2.topk(min(k, len(centres)), dim=1, largest=False)
    wts = torch.softmax(-near / (2 * sigma**2), dim=1)  # the Gaussian weights, normalised
    out = torch.zeros_like(d2).scatter_(1, idx, wts)
    return out.reshape(B, h, w, -1).permute(0, 3, 1, 2)


def nearest_bin(ab: Tensor, centres: Tensor) -> Tensor:
    """ab: [B, 2, h, w] -> index of the nearest bin [B, h, w]."""
    B, _, h, w = ab.shape
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    return torch.cdist(pts, centres.float()).argmin(1).reshape(B, h, w)


def empirical_prior(ab: Tensor, centres: Tensor, sigma: float = 5.0) -> Tensor:
    """ab: [B, 2, h, w] pixels of the training data -> the prior p [Q] over the bins: the share of
    pixels whose nearest bin each is, smoothed with a Gaussian kernel of `sigma` over the bins'
    centres (§2.2: sigma 5; the official code ships the smoothed ImageNet prior)."""
    counts = torch.bincount(nearest_bin(ab, centres).flatten(), minlength=len(centres)).double()
    d2 = torch.cdist(centres.double(), centres.double()).square()
    smoothed = torch.exp(-d2 / (2 * sigma**2)) @ (counts / counts.sum())
    return (smoothed / smoothed.sum()).float()


def rebalance_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """The class-rebalancing weights w [Q] (§2.2, eq. 4): w ∝ ((1 - lam) p + lam / Q)^-1, scaled so
    that E_p[w] = sum_q p_q w_q = 1 (the official PriorFactor, gamma = lam = 0.5, alpha = 1; its
    uniform spreads over the bins the prior covers, here all Q, the same where the prior covers
    every bin)."""
    w = 1 / ((1 - lam) * prior + lam / len(prior))
    return w / (prior * w).sum()


def annealed_mean(logits: Tensor, values: Tensor, temperature: float = 0.38) -> Tensor:
    """logits: [B, Q, h, w] -> the annealed mean [B, D, h, w] of the bins' `values` [Q, D] (§2.3):
    the expectation under f_T(z) ∝ exp(log z / T), z = softmax(logits), that is softmax(logits / T).
    T = 1: the mean; T -> 0: the mode; the paper's T = 0.38 sits between."""
    p = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qd->bdhw", p, values.to(p))


def l_bins(n: int) -> Tensor:
    """Centres [n, 1] of n bins of equal width over L in [0, 100]."""
    return ((torch.arange(n) + 0.5) * (100 / n)).unsqueeze(1)


def quantise_l(L: Tensor, n: int) -> Tensor:
    """L: [B, 1, h, w] in [0, 100] -> its bin [B, h, w] among n of equal width."""
    return (L[:, 0] * (n / 100)).floor().long().clamp(0, n - 1)


def not_grey(ab: Tensor, threshold: float = 5.0) -> Tensor:
    """ab: [B, 2, h, w] -> [B] 1. where some pixel's |a| or |b| exceeds `threshold`, else 0.: the
    official NonGrayMaskLayer (threshold 5), which takes grey images out of the loss."""
    return (ab.abs() > threshold).flatten(1).any(1).float()


def soft_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """logits, target: [B, Q, h, w] (target rows sum to 1); weight: [B, h, w] or None -> the mean
    over pixels of weight * -sum_q target_q log softmax(logits)_q (eq. 2, with eq. 3's v)."""
    ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)  # [B, h, w]
    return (ce * weight).mean() if weight is not None else ce.mean()


class PixelHead(nn.Module):
    """A class per pixel from a trunk's last feature map [B, C, h', w']: 3x3 conv-BN-ReLU, bilinear
    up-sampling to the target grid, 3x3 conv-BN-ReLU, 1x1 conv to `classes` logits. The official
    net's conv8 (a stride-2 deconvolution, two 3x3 convs, a 1x1 to 313) does the same from 1/8 to
    1/4 of the input; the bilinear step takes any trunk's grid (ResNet, ViT) there."""

    def __init__(self, in_dim: int, hidden: int, classes: int):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(in_dim, hidden, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.post = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, classes, 1))

    def forward(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        x = F.interpolate(self.pre(maps), size=tuple(size), mode="bilinear", align_corners=False)
        return self.post(x)
