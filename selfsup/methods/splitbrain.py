"""Split-brain autoencoder: Unsupervised Learning by Cross-Channel Prediction.

Zhang, Isola, Efros, 2017. https://arxiv.org/abs/1611.09842 (project: richzhang/splitbrainauto)

The network is split in two disjoint halves of half the width (`backbone.input=split`,
selfsup/backbones/colour.py): one sees the Lab lightness L and predicts the colours ab, the other
sees ab and predicts L (§3.1-3.2). The encoder that is evaluated is the whole network, the two
halves' features concatenated at every layer. Each half is trained with a cross-entropy on
quantised targets, the paper's best variant (Table 2, "cl,cl"): ab over the in-gamut bins of grid
10 (the colorization paper's quantisation, soft-encoded over the 10 nearest bins as that code
does), L over 50 bins of equal width (our reading of §4.1; the official repository releases the
trained model, not the training code). Each half predicts at a quarter of the input's resolution
from its last feature map (the targets: every 4th pixel of every 4th row, as the colorization
code's data_ab_ss). No class rebalancing: the paper does not say it used any here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.colour import ab_input, lab_to_srgb, l_input
from selfsup.parts.colour_bins import (PixelHead, ab_bins, annealed_mean, l_bins, quantise_l,
                                       require_input, soft_cross_entropy, soft_encode)
from selfsup.protocol import Output, Progress


@dataclass
class SplitBrainConfig:
    """name: registry key. grid: side of the ab bins (10). neighbours / sigma: the ab targets'
    soft encoding (10 nearest bins, Gaussian sigma 5, as the colorization code). l_bins: bins of
    L over [0, 100] (50). stride: the prediction grid is the input's every `stride`-th pixel (4).
    head_hidden: channels of each half's pixel head. temperature: of the annealed mean that
    decodes the pictures (0.38, as colorization)."""

    name: str = "splitbrain"
    grid: float = 10.0
    neighbours: int = 10
    sigma: float = 5.0
    l_bins: int = 50
    stride: int = 4
    head_hidden: int = 256
    temperature: float = 0.38

    tiny = ("data.channels=3", "backbone.input=split", "method.head_hidden=16")

    def __post_init__(self):
        for name, low in (("neighbours", 1), ("l_bins", 2), ("stride", 1), ("head_hidden", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"method.{name}={getattr(self, name)}: must be at least {low}")
        for name in ("grid", "sigma", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"method.{name}={getattr(self, name)}: must be positive")


class SplitBrain(nn.Module):
    config_class = SplitBrainConfig

    def __init__(self, cfg: SplitBrainConfig, backbone: nn.Module):
        super().__init__()
        require_input(backbone, "split", "splitbrain", "two half-width trunks, on L and on ab")
        self.cfg = cfg
        self.backbone = backbone
        self.last = backbone.layer_names[-1]
        self.register_buffer("centres", ab_bins(cfg.grid), persistent=False)  # [Q, 2]
        self.register_buffer("l_centres", l_bins(cfg.l_bins), persistent=False)  # [n, 1]
        self.head_ab = PixelHead(backbone.trunk_l.layer_dims[self.last], cfg.head_hidden, len(self.centres))
        self.head_l = PixelHead(backbone.trunk_ab.layer_dims[self.last], cfg.head_hidden, cfg.l_bins)

    def logits(self, x: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised RGB x [B, 3, H, W] and its Lab -> (ab logits from L [B, Q, h, w], L logits
        from ab [B, l_bins, h, w]) on the grid of every `stride`-th pixel."""
        s, last, bb = self.cfg.stride, self.last, self.backbone
        size = lab[:, :, ::s, ::s].shape[-2:]
        from_l = bb.trunk_l.forward_maps(l_input(lab).to(x.dtype), [last])[last]
        from_ab = bb.trunk_ab.forward_maps(ab_input(lab).to(x.dtype), [last])[last]
        return self.head_ab(from_l, size), self.head_l(from_ab, size)

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        x = torch.cat(views)
        lab = self.backbone.lab(x)
        ab_logits, l_logits = self.logits(x, lab)
        s = self.cfg.stride
        target = lab[:, :, ::s, ::s]
        with torch.no_grad():
            ab_target = soft_encode(target[:, 1:], self.centres, self.cfg.neighbours, self.cfg.sigma)
            l_target = quantise_l(target[:, :1], self.cfg.l_bins)  # [B, h, w]
        loss_ab = soft_cross_entropy(ab_logits, ab_target)
        loss_l = F.cross_entropy(l_logits.float(), l_target)
        metrics = {"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(),
                   "ab_acc": (ab_logits.argmax(1) == ab_target.argmax(1)).float().mean().detach(),
                   "l_acc": (l_logits.argmax(1) == l_target).float().mean().detach()}
        return Output(loss_ab + loss_l, metrics)

    def pictures(self, views: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Rows: the images; their lightness (the L half's input); the colours the L half predicts
        with the true L; the lightness the ab half predicts with the true ab (annealed means)."""
        x = views[0].float()
        lab = self.backbone.lab(x)
        ab_logits, l_logits = self.logits(x, lab)
        t, size = self.cfg.temperature, x.shape[-2:]
        ab = F.interpolate(annealed_mean(ab_logits, self.centres, t), size=size, mode="bilinear",
                           align_corners=False)
        L = F.interpolate(annealed_mean(l_logits, self.l_centres, t), size=size, mode="bilinear",
                          align_corners=False)
        norm = self.backbone.normalise
        grey = torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1)
        return {"splitbrain": [x, norm(lab_to_srgb(grey)), norm(lab_to_srgb(torch.cat([lab[:, :1], ab], 1))),
                               norm(lab_to_srgb(torch.cat([L, lab[:, 1:]], 1)))]}
