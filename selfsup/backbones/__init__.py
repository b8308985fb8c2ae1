"""Image encoders: a config dataclass, a registry, and `build_backbone`.

Every backbone maps images `[B, C, H, W]` to pooled features `[B, dim]` and exposes
`layer_names`, `layer_dims`, `forward_maps(x, names) -> {name: [B, layer_dims[name], h, w]}` (each
layer's feature map on its spatial grid) and `forward_layers(x, names) -> {name: [B, D]}` (those
maps pooled the backbone's way) for per-layer probing, and `input_shape` (C, H, W), the images
it was built for. A backbone that fits buffers to the data before training (iGPT's palette)
names them in `fitted_buffers`.
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from torch import nn

from .colour import LabEncoder, SplitLabEncoder
from .dcgan import DCGANDiscriminator, dcgan
from .igpt import ImageGPT, igpt_s
from .resnet import ResNet, resnet18, resnet34, resnet50
from .vit import VisionTransformer, patchify, unpatchify, vit_base, vit_small, vit_tiny


@dataclass
class BackboneConfig:
    """Which encoder to build and how.

    name: registry key, one of `BACKBONES` (resnet18 | resnet34 | resnet50 | vit_tiny |
        vit_small | vit_base | igpt_s | dcgan).
    cifar_stem: ResNet only. True: 3x3 stride-1 stem conv and no max-pool, so small images keep
        their resolution; False: ImageNet 7x7 stride-2 conv + max-pool; None: decide from the image
        size (CIFAR stem when image_size <= 64).
    stem_stride: ResNet with the CIFAR stem only. The stem conv's stride: 2 halves every feature
        map (a quarter of the cost) while the stem still sees every pixel.
    width: ResNet and DCGAN. Channel multiplier; ResNet stage widths are 64·width, 128·width,
        256·width, 512·width (times 4 for Bottleneck outputs); DCGAN layers 64·width, 128·width, ...
    zero_init_residual: ResNet only. Start each residual branch's last BN at gamma = 0 so every
        block begins as the identity (Goyal et al. 2017, §5.1).
    patch_size: ViT only. Side of the square patches; must divide the image size.
    pool: ViT only. "mean": mean of the final patch tokens; "cls": a class token.
    drop_path: ViT only. Stochastic-depth rate of the last block, rising linearly from 0.
    embed_dim / depth / num_heads: ViT and iGPT. Override the named size's width, number of
        blocks and heads (null: the size's own, e.g. 192 / 12 / 3 for vit_tiny, 512 / 24 / 8 for
        igpt_s); for small CPU models.
    palette_size: iGPT only. Colour palette entries (512: the paper's 9-bit palette), built by
        k-means over the training pixels when training starts.
    causal: iGPT only. Autoregressive attention (true, method.objective=ar) or bidirectional
        (false, the BERT objective).
    input: what the encoder sees of the run's RGB images (selfsup/backbones/colour.py). rgb: the
        images; L: their CIE Lab lightness only (colorization); split: two trunks of half the
        width, one on L and one on ab, concatenated at every layer (split-brain; ResNet only).
        L and split need colour images (data.channels=3 repeats grey ones).
    """

    name: str = "resnet18"
    cifar_stem: Optional[bool] = None
    stem_stride: int = 1
    width: float = 1.0
    zero_init_residual: bool = True
    patch_size: int = 4
    pool: str = "mean"
    drop_path: float = 0.0
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    palette_size: int = 512
    causal: bool = True
    input: str = "rgb"

    def __post_init__(self):
        if self.name not in BACKBONES:
            raise ValueError(f"backbone.name={self.name!r} is not one of {', '.join(sorted(BACKBONES))}")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"backbone.pool={self.pool!r} is not one of mean, cls")
        if self.input not in INPUTS:
            raise ValueError(f"backbone.input={self.input!r} is not one of {', '.join(INPUTS)}")
        if self.input == "split" and not self.name.startswith("resnet"):
            raise ValueError(f"backbone.input=split needs a ResNet (two half-width trunks), not "
                             f"backbone.name={self.name}")
        if self.input == "L" and self.name == "igpt_s":
            raise ValueError("backbone.input=L: igpt_s reads palette tokens of RGB pixels; use a "
                             "ResNet, ViT or dcgan")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"backbone.drop_path={self.drop_path}: must be in [0, 1)")
        if self.width <= 0:
            raise ValueError(f"backbone.width={self.width}: must be positive")
        for name, low in (("stem_stride", 1), ("patch_size", 1), ("embed_dim", 1), ("depth", 1), ("num_heads", 1),
                          ("palette_size", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"backbone.{name}={value}: must be at least {low}")


INPUTS = ("rgb", "L", "split")

# name -> builder(cfg, in_channels, image_size); a new backbone is one line here.
BACKBONES: Dict[str, Callable[[BackboneConfig, int, int], nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "igpt_s": igpt_s,
    "dcgan": dcgan,
}


def build_backbone(cfg: BackboneConfig, in_channels: int, image_size: int,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> nn.Module:
    """Build the encoder `cfg.name` for images of `in_channels` channels and side `image_size`.
    mean, std: the run's per-channel normalisation, which an encoder of backbone.input L or split
    keeps (to undo it before its Lab conversion); None where weights loaded next bring them."""
    if cfg.name not in BACKBONES:
        raise ValueError(f"backbone.name={cfg.name!r} is not one of {', '.join(sorted(BACKBONES))}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    backbone = _build(cfg, in_channels, image_size, mean, std)
    # The images it is built for, (C, H, W): for heads that decode back to pixels and must be
    # built before any batch is seen (the context encoder's decoder and discriminator).
    backbone.input_shape = (in_channels, image_size, image_size)
    return backbone


def _build(cfg: BackboneConfig, in_channels: int, image_size: int,
           mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> nn.Module:
    build = BACKBONES[cfg.name]
    if cfg.input == "rgb":
        return build(cfg, in_channels, image_size)
    if in_channels != 3:
        raise ValueError(f"backbone.input={cfg.input} needs colour images; the data has {in_channels} "
                         f"channel{'s' if in_channels != 1 else ''}: data.channels=3 repeats grey images "
                         f"to RGB (their colours are then all grey)")
    if cfg.input == "L":
        return LabEncoder(build(cfg, 1, image_size), mean, std)
    half = dataclasses.replace(cfg, width=cfg.width / 2)
    return SplitLabEncoder(build(half, 1, image_size), build(half, 2, image_size), mean, std)


__all__ = [
    "BACKBONES",
    "DCGANDiscriminator",
    "BackboneConfig",
    "ImageGPT",
    "LabEncoder",
    "ResNet",
    "SplitLabEncoder",
    "VisionTransformer",
    "build_backbone",
    "patchify",
    "unpatchify",
]
