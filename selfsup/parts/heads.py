"""The heads methods put on top of the backbone: the MLP of SimCLR, MoCo, BYOL, DINO and the
pretext tasks, and DINO's weight-normalised projection head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out: int, layers: int, bn: bool = True, last_bn: bool = False,
        act: str = "relu") -> nn.Sequential:
    """`layers` linear layers: (Linear-BN-act) x (layers - 1), then Linear to `out`.

    bn: BatchNorm after each hidden linear (those linears then carry no bias, as in the official
        SimCLR and MoCo v3 code). last_bn: an affine-free BatchNorm after the output linear
        (MoCo v3's projector, Chen et al. 2021 §4). act: relu | gelu (DINO's head uses GELU).
    """
    if layers < 1:
        raise ValueError(f"an MLP needs at least 1 layer, got {layers}")
    if act not in ("relu", "gelu"):
        raise ValueError(f"act must be relu or gelu, got {act!r}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True) if act == "relu" else nn.GELU())
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose weight rows are rescaled to norm g: the weight-normalised
    last layer of DINO's head (Salimans & Kingma 2016), with g fixed at 1 unless `learn_norm`.

    in_dim, out_dim: input and output widths. learn_norm: g is a learnable [out_dim] parameter
    starting at 1 (DINO's norm_last_layer=False); otherwise it is 1 and there is no parameter.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False):
        super().__init__()
        # nn.Linear's own init: DINOHead builds this layer after its trunc-normal init pass.
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.g = nn.Parameter(torch.ones(out_dim)) if learn_norm else None

    def normalized_weight(self) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)  # [out_dim, in_dim], unit rows
        return w if self.g is None else w * self.g.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, appendix "Projection head"; DINOHead in the
    official vision_transformer.py), which iBOT shares: an MLP (GELU) of `layers` linears of width
    `hidden` to a `bottleneck`, L2 normalisation, then the weight-normalised linear layer to
    `out_dim` logits. bn: BatchNorm in the MLP (DINO's ResNet runs). learn_norm: learn the last
    layer's row norms (norm_last_layer=False)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, layers: int, out_dim: int,
                 bn: bool = False, learn_norm: bool = False):
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers, bn=bn, act="gelu")
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck, out_dim, learn_norm=learn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
