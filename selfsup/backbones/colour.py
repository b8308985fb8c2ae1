"""Encoders that see CIE Lab channels of the run's RGB images: `backbone.input=L` (colorization)
and `backbone.input=split` (the split-brain autoencoder).

The evaluators, the API and the exports feed every encoder the run's normalised RGB images, so the
colour-space change lives in the encoder itself: the wrappers here de-normalise their input with
the run's per-channel mean and std (persistent buffers, saved with the encoder and named in
`fitted_buffers`, so a random-init baseline keeps them), convert sRGB to Lab, scale the channels
(L/50 - 1 and ab/110, both about [-1, 1]: the official colorization net takes L - 50, the 0-centred
lightness, richzhang/colorization models/colorization_train_val_v2.prototxt) and run the trunk(s).

sRGB <-> Lab is the standard conversion (IEC 61966-2-1 companding, D65 white, the CIE 1976 f(t)
with scikit-image's constants, which the official code called: skimage.color.rgb2lab), batched in
float32 on the input's device, with no gradient needed through it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

# sRGB (linear) -> XYZ, and the D65 white point (2 degree observer), as skimage.color.
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
D65 = (0.95047, 1.0, 1.08883)
_EPS, _KAPPA = 0.008856, 7.787  # the CIE f(t) knee (6/29)^3 and its linear slope, as skimage


def _matrix(x: Tensor, inverse: bool = False) -> Tensor:
    m = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    m = torch.linalg.inv(m) if inverse else m
    return m.to(device=x.device, dtype=x.dtype)


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """rgb: [B, 3, H, W] sRGB in [0, 1] -> Lab [B, 3, H, W]: L in [0, 100], a and b about
    [-110, 110]."""
    rgb = rgb.float().clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _matrix(linear), linear)
    xyz = xyz / torch.tensor(D65, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS).pow(1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_srgb(lab: Tensor) -> Tensor:
    """lab: [B, 3, H, W] -> sRGB [B, 3, H, W] in [0, 1]; colours outside the gamut are clipped."""
    lab = lab.float()
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp_min(0)], 1)  # z >= 0, as skimage
    xyz = torch.where(f > 0.2068966, f.pow(3), (f - 16 / 116) / _KAPPA)
    xyz = xyz * torch.tensor(D65, device=lab.device).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", _matrix(xyz, inverse=True), xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308).pow(1 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0, 1)


def l_input(lab: Tensor) -> Tensor:
    """Lab [B, 3, H, W] -> the lightness as a trunk sees it [B, 1, H, W], about [-1, 1]."""
    return lab[:, :1] / 50 - 1


def ab_input(lab: Tensor) -> Tensor:
    """Lab [B, 3, H, W] -> the colour channels as a trunk sees them [B, 2, H, W], about [-1, 1]."""
    return lab[:, 1:] / 110


class _LabWrapper(nn.Module):
    """De-normalises the run's RGB input and converts it to Lab. mean / std: the run's
    per-channel statistics in [0, 1] units (None: 0 and 1, for weights loaded afterwards)."""

    fitted_buffers = ("mean", "std")

    def __init__(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean) if mean is not None else [0.0] * 3))
        self.register_buffer("std", torch.tensor(list(std) if std is not None else [1.0] * 3))

    def rgb(self, x: Tensor) -> Tensor:
        """Normalised input [B, 3, H, W] -> sRGB in [0, 1]."""
        return x.float() * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)

    def normalise(self, rgb: Tensor) -> Tensor:
        """sRGB in [0, 1] -> the run's normalised input (for pictures)."""
        return (rgb - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def lab(self, x: Tensor) -> Tensor:
        """Normalised input [B, 3, H, W] -> Lab [B, 3, H, W] float32 (no gradient flows through it;
        autocast off: bf16 would move L by up to 0.4)."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return srgb_to_lab(self.rgb(x))


class LabEncoder(_LabWrapper):
    """`backbone.input=L`: the trunk (built for 1 channel) sees the Lab lightness of the RGB input.
    Follows the backbone contract of the trunk: dim, layer_names, layer_dims, forward,
    forward_maps, forward_layers."""

    input = "L"

    def __init__(self, trunk: nn.Module, mean=None, std=None):
        super().__init__(mean, std)
        self.trunk = trunk
        self.dim: int = trunk.dim
        self.layer_names: List[str] = list(trunk.layer_names)
        self.layer_dims: Dict[str, int] = dict(trunk.layer_dims)

    def forward(self, x: Tensor) -> Tensor:
        """x: normalised RGB [B, 3, H, W] -> [B, dim]."""
        return self.trunk(l_input(self.lab(x)).to(x.dtype))

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        return self.trunk.forward_maps(l_input(self.lab(x)).to(x.dtype), names)

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        return self.trunk.forward_layers(l_input(self.lab(x)).to(x.dtype), names)


class SplitLabEncoder(_LabWrapper):
    """`backbone.input=split`: two trunks of half the width, one on L (trunk_l) and one on ab
    (trunk_ab); every layer's output is the two halves' concatenated, [L half, ab half] (Zhang
    et al. 2017, §3.2: the split network is the full one with every layer split in two)."""

    input = "split"

    def __init__(self, trunk_l: nn.Module, trunk_ab: nn.Module, mean=None, std=None):
        super().__init__(mean, std)
        self.trunk_l, self.trunk_ab = trunk_l, trunk_ab
        self.dim: int = trunk_l.dim + trunk_ab.dim
        self.layer_names: List[str] = list(trunk_l.layer_names)
        self.layer_dims: Dict[str, int] = {n: trunk_l.layer_dims[n] + trunk_ab.layer_dims[n]
                                           for n in self.layer_names}

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised RGB -> (the L trunk's input [B, 1, H, W], the ab trunk's [B, 2, H, W])."""
        lab = self.lab(x)
        return l_input(lab).to(x.dtype), ab_input(lab).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        xl, xab = self.halves(x)
        return torch.cat([self.trunk_l(xl), self.trunk_ab(xab)], 1)

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        xl, xab = self.halves(x)
        ml, mab = self.trunk_l.forward_maps(xl, names), self.trunk_ab.forward_maps(xab, names)
        return {n: torch.cat([ml[n], mab[n]], 1) for n in names}

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        xl, xab = self.halves(x)
        ml, mab = self.trunk_l.forward_layers(xl, names), self.trunk_ab.forward_layers(xab, names)
        return {n: torch.cat([ml[n], mab[n]], 1) for n in names}
