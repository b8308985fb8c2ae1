"""The DCGAN discriminator as an encoder: Radford, Metz, Chintala 2015,
https://arxiv.org/abs/1511.06434.

The paper's architecture guidelines (§3): strided convolutions instead of pooling, batch norm in
every layer but the discriminator's input layer, LeakyReLU (slope 0.2) throughout, no fully
connected hidden layers, weights drawn from N(0, 0.02). Each layer is a 4x4 convolution of stride
2 that halves the side and doubles the channels (64, 128, 256, ... times `width`), until the map
is at most 4x4: three layers for 32 px images (4x4), four for 64 px, three for 28 px (3x3). The
convolution over the last map to one real/fake logit is the GAN's head (selfsup/parts/gan.py),
so the exported encoder is the discriminator's trunk. Its pooled output is the last map's mean; the paper's own features
(every layer max-pooled to 4x4, §5.1) are the evaluators' `eval.pool` setting.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from torch import Tensor, nn


class DCGANDiscriminator(nn.Module):
    """in_channels, image_size: the images (side at least 8). width: multiplier on the base
    channels 64, 128, 256, ..."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: float = 1.0):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"backbone.name=dcgan needs images of at least 8 px (views.size), got {image_size}")
        depth, side = 0, image_size
        while side > 4:
            depth, side = depth + 1, side // 2
        self.map_size = side  # the last map's side
        cin, layers = in_channels, []
        self.layer_dims: Dict[str, int] = {}
        for i in range(depth):
            cout = max(1, int(round(64 * width * 2**i)))
            layers.append(nn.Sequential(
                nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=i == 0),
                # No batch norm on the input layer (§3: it made samples oscillate).
                nn.BatchNorm2d(cout) if i else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True)))
            self.layer_dims[f"conv{i + 1}"] = cin = cout
        self.layers = nn.ModuleList(layers)
        self.layer_names: List[str] = list(self.layer_dims)
        self.dim: int = cin
        dcgan_init(self)

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """x: [B, C, H, W] -> {name: [B, layer_dims[name], h, w]}. Stops after the deepest
        requested layer."""
        unknown = set(names) - set(self.layer_names)
        if unknown:
            raise ValueError(f"unknown DCGAN layers {sorted(unknown)}; have {self.layer_names}")
        out: Dict[str, Tensor] = {}
        for name, layer in zip(self.layer_names, self.layers):
            if len(out) == len(set(names)):
                break
            x = layer(x)
            if name in names:
                out[name] = x
        return {n: out[n] for n in names}

    def forward_map(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> the last map [B, dim, map_size, map_size] (what the GAN head reads)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, dim], the last map's mean."""
        return self.forward_map(x).mean(dim=(2, 3))

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """{name: [B, layer_dims[name]]}, each map averaged over its positions."""
        return {n: m.mean(dim=(2, 3)) for n, m in self.forward_maps(x, names).items()}


def dcgan_init(module: nn.Module) -> None:
    """§4: convolution weights from N(0, 0.02), biases 0; batch-norm scales from N(1, 0.02),
    shifts 0 (dcgan.torch's and the context encoder's weights_init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def dcgan(cfg, in_channels: int, image_size: int) -> DCGANDiscriminator:
    return DCGANDiscriminator(in_channels, image_size, width=cfg.width)
