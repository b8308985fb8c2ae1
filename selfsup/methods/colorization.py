"""Colorization: Colorful Image Colorization.

Zhang, Isola, Efros, 2016. https://arxiv.org/abs/1603.08511 (official code: richzhang/colorization)

The encoder sees the CIE Lab lightness L of an image (`backbone.input=L`: the conversion lives in
the encoder, selfsup/backbones/colour.py) and a small head predicts, for every pixel of a grid at a
quarter of the input's resolution, a distribution over the quantised in-gamut ab colours (§2.1).
The loss is the cross-entropy against soft-encoded targets (the true ab spread over its nearest
bins with a Gaussian kernel), each pixel weighted by the rarity of its colour under the empirical
prior of the training data mixed with a uniform (class rebalancing, §2.2), so that the net does not
settle for the desaturated colours that dominate natural images. Pictures are decoded with the
annealed mean (§2.3, T = 0.38). The shared pieces are in selfsup/parts/colour_bins.py.

Where the official code differs from the paper, the code is followed:
- k = 10 nearest bins in the soft encoding, not the paper's 5 (NNEncLayer: NN = 10, sigma = 5);
- the targets are the ab of every 4th pixel of every 4th row (the prototxt's data_ab_ss, a 1x1
  stride-4 convolution of constant weight), not an average over the 4x4 cell;
- grey images (no pixel with |a| or |b| above 5) are taken out of the loss (NonGrayMaskLayer);
- the rebalancing weights scale the gradient of each pixel (ClassRebalanceMultLayer), which is a
  per-pixel weight on its cross-entropy, as here.
The bins are computed from the sRGB cube (261 for grid 10, where the official file has 313) and
the prior is fitted to the run's own training images when training starts (the official code
ships ImageNet's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup.backbones.colour import lab_to_srgb, l_input
from selfsup.parts.colour_bins import (PixelHead, ab_bins, annealed_mean, empirical_prior, not_grey,
                                       rebalance_weights, require_input, soft_cross_entropy, soft_encode)
from selfsup.protocol import Output, Progress


@dataclass
class ColorizationConfig:
    """name: registry key. grid: side of the ab bins (§2.1: 10). neighbours / sigma: the soft
    encoding's nearest bins and Gaussian width (the official code: 10 and 5). rebalance: lambda,
    the uniform's share in the prior the weights invert (§2.2: 0.5; 1: every pixel weighs the
    same; null: no weights at all). prior_sigma: the Gaussian smoothing of the empirical
    prior (5). prior_images: training images the prior is fitted from. grey_threshold: images
    whose every |a| and |b| is at most this are left out of the loss (5; 0: none). stride: the
    prediction grid is the input's every `stride`-th pixel (4, as the official net). head_hidden:
    channels of the pixel head. temperature: of the annealed mean in the pictures (0.38)."""

    name: str = "colorization"
    grid: float = 10.0
    neighbours: int = 10
    sigma: float = 5.0
    rebalance: Optional[float] = 0.5
    prior_sigma: float = 5.0
    prior_images: int = 5000
    grey_threshold: float = 5.0
    stride: int = 4
    head_hidden: int = 256
    temperature: float = 0.38

    tiny = ("data.channels=3", "backbone.input=L", "method.head_hidden=16", "method.prior_images=64")

    def __post_init__(self):
        for name in ("neighbours", "prior_images", "stride", "head_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name}={getattr(self, name)}: must be at least 1")
        for name in ("grid", "sigma", "prior_sigma", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"method.{name}={getattr(self, name)}: must be positive")
        if self.rebalance is not None and not 0 <= self.rebalance <= 1:
            raise ValueError(f"method.rebalance={self.rebalance}: must be in [0, 1]")
        if self.grey_threshold < 0:
            raise ValueError(f"method.grey_threshold={self.grey_threshold}: must be at least 0")


class Colorization(nn.Module):
    config_class = ColorizationConfig
    fitted_buffers = ("prior",)

    def __init__(self, cfg: ColorizationConfig, backbone: nn.Module):
        super().__init__()
        require_input(backbone, "L", "colorization", "the encoder sees the lightness, the method "
                      "predicts the colours")
        self.cfg = cfg
        self.backbone = backbone
        self.last = backbone.layer_names[-1]
        self.register_buffer("centres", ab_bins(cfg.grid), persistent=False)  # [Q, 2]
        # Filled by init_from_data; zero until then (and in a run resumed: its checkpoint's).
        self.register_buffer("prior", torch.zeros(len(self.centres)))
        self.head = PixelHead(backbone.layer_dims[self.last], cfg.head_hidden, len(self.centres))

    @torch.no_grad()
    def init_from_data(self, sample, seed: int) -> dict[str, float]:
        """The empirical prior over the bins, from the targets of `prior_images` training images."""
        if bool(self.prior.sum() > 0):  # a resumed run keeps its checkpoint's
            return {}
        start = time.perf_counter()
        x = sample(self.cfg.prior_images)[0]
        s = self.cfg.stride
        ab = torch.cat([self.backbone.lab(chunk)[:, 1:, ::s, ::s] for chunk in x.split(256)])
        self.prior.copy_(empirical_prior(ab, self.centres, self.cfg.prior_sigma))
        return {"seconds": time.perf_counter() - start, "bins_seen": float((self.prior > 1e-4).sum())}

    def logits(self, x: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """Normalised RGB x [B, 3, H, W] and its Lab -> logits over the bins [B, Q, h, w] on the
        grid of every `stride`-th pixel."""
        s = self.cfg.stride
        maps = self.backbone.trunk.forward_maps(l_input(lab).to(x.dtype), [self.last])[self.last]
        return self.head(maps, lab[:, :, ::s, ::s].shape[-2:])

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        x = torch.cat(views)
        lab = self.backbone.lab(x)
        logits = self.logits(x, lab)
        s, c = self.cfg.stride, self.cfg
        ab = lab[:, 1:, ::s, ::s]  # [B, 2, h, w], the official data_ab_ss
        with torch.no_grad():
            target = soft_encode(ab, self.centres, c.neighbours, c.sigma)  # [B, Q, h, w]
            weight = torch.ones_like(target[:, 0])
            if c.rebalance is not None:
                weight = rebalance_weights(self.prior, c.rebalance)[target.argmax(1)]
            if c.grey_threshold > 0:
                weight = weight * not_grey(ab, c.grey_threshold).view(-1, 1, 1)
        loss = soft_cross_entropy(logits, target, weight)
        acc = (logits.argmax(1) == target.argmax(1)).float().mean()
        return Output(loss, {"bin_acc": acc.detach()})

    def colourise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised RGB [B, 3, H, W] -> (its lightness alone, its colours by the annealed mean
        of the prediction, up-sampled and put with the true L), both as normalised RGB."""
        lab = self.backbone.lab(x)
        ab = annealed_mean(self.logits(x, lab), self.centres, self.cfg.temperature)
        ab = nn.functional.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        grey = torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1)
        norm = self.backbone.normalise
        return norm(lab_to_srgb(grey)), norm(lab_to_srgb(torch.cat([lab[:, :1], ab], 1)))

    def pictures(self, views: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Rows: the images, their lightness (what the encoder sees), their colourisation."""
        x = views[0].float()
        grey, coloured = self.colourise(x)
        return {"colorization": [x, grey, coloured]}
