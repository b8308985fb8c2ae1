"""The MLP heads that SimCLR, MoCo, BYOL and DINO put on top of the backbone."""

from __future__ import annotations

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
