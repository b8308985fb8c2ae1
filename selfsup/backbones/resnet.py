"""ResNet-18/34/50 without the classifier: He et al. 2016, "Deep Residual Learning for Image
Recognition", https://arxiv.org/abs/1512.03385 (architecture: §3.3 and Table 1).

Differences from the paper, each for a reason:
- A CIFAR stem (3x3 stride-1 conv, no max-pool) for small images, as in the paper's CIFAR
  experiments (§4.2) and in SimCLR's CIFAR setup (Chen et al. 2020, Appendix B.9): the ImageNet
  stem would shrink a 32x32 image to 8x8 before the first block.
- Stride on the 3x3 conv of the Bottleneck ("ResNet v1.5"), the torchvision choice that the
  self-supervised literature's numbers are reported with.
- A channel multiplier `width` for cheap small-data runs and wide ResNets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Sequence, Type, Union

from torch import Tensor, nn

if TYPE_CHECKING:
    from . import BackboneConfig

LAYER_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BN, which has its own shift.
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(cin: int, cout: int, stride: int) -> Union[nn.Module, None]:
    # Projection shortcut only where the shape changes: option (B) of §3.3.
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """A ResNet trunk that returns globally average-pooled features `[B, dim]`.

    block: BasicBlock or Bottleneck.
    blocks_per_stage: number of blocks in each of the four stages, e.g. (2, 2, 2, 2).
    in_channels: image channels (1 for grayscale).
    cifar_stem: 3x3 stride-1 stem without max-pool instead of the ImageNet 7x7 stride-2 + max-pool.
    stem_stride: the CIFAR stem's stride (2 halves every feature map: a quarter of the cost).
    width: channel multiplier on the base widths 64, 128, 256, 512.
    zero_init_residual: zero the last BN gamma of every residual branch.
    """

    def __init__(
        self,
        block: Block,
        blocks_per_stage: Sequence[int],
        in_channels: int = 3,
        cifar_stem: bool = False,
        width: float = 1.0,
        zero_init_residual: bool = True,
        stem_stride: int = 1,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"backbone.width must be > 0, got {width}")
        widths = [max(1, int(round(64 * width * 2**i))) for i in range(4)]
        stem_width = widths[0]
        if cifar_stem:
            stem: List[nn.Module] = [_conv3x3(in_channels, stem_width, stem_stride)]
        else:
            stem = [nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)]
        stem += [nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)]
        if not cifar_stem:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        cin = stem_width
        self.layer_dims: Dict[str, int] = {"stem": stem_width}
        for i, (planes, n) in enumerate(zip(widths, blocks_per_stage)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(block(cin, planes, stride if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self.layer_dims[f"layer{i + 1}"] = cin
        self.layer_names: List[str] = list(LAYER_NAMES)
        self.dim: int = cin
        self.cifar_stem = bool(cifar_stem)
        self.stem_stride = stem_stride
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving Deep into Rectifiers") §2.2, fan-out as in torchvision.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity, which eases large-batch training
            # (Goyal et al. 2017, https://arxiv.org/abs/1706.02677 §5.1).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _stages(self) -> List[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, dim], the global average pool of layer4 (no fc)."""
        for stage in self._stages():
            x = stage(x)
        return x.mean(dim=(2, 3))

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """x: [B, C, H, W] -> {name: [B, layer_dims[name], h, w]}, each layer's feature map.

        Stops after the deepest requested layer, so probing early layers is cheap.
        """
        wanted = set(names)
        unknown = wanted - set(self.layer_names)
        if unknown:
            raise ValueError(f"unknown ResNet layers {sorted(unknown)}; have {self.layer_names}")
        out: Dict[str, Tensor] = {}
        for name, stage in zip(self.layer_names, self._stages()):
            if len(out) == len(wanted):
                break
            x = stage(x)
            if name in wanted:
                out[name] = x
        return {name: out[name] for name in names}

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """x: [B, C, H, W] -> {name: [B, layer_dims[name]]}, each map globally average-pooled."""
        return {n: m.mean(dim=(2, 3)) for n, m in self.forward_maps(x, names).items()}


def _build(block: Block, blocks_per_stage: Sequence[int]):
    def build(cfg: "BackboneConfig", in_channels: int, image_size: int) -> ResNet:
        cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= 64
        if cfg.stem_stride != 1 and not cifar_stem:
            raise ValueError(f"backbone.stem_stride={cfg.stem_stride} sets the CIFAR stem's stride; "
                             f"this network has the ImageNet stem (backbone.cifar_stem=false or "
                             f"images over 64 px)")
        return ResNet(
            block,
            blocks_per_stage,
            in_channels=in_channels,
            cifar_stem=cifar_stem,
            width=cfg.width,
            zero_init_residual=cfg.zero_init_residual,
            stem_stride=cfg.stem_stride,
        )

    return build


resnet18 = _build(BasicBlock, (2, 2, 2, 2))
resnet34 = _build(BasicBlock, (3, 4, 6, 3))
resnet50 = _build(Bottleneck, (3, 4, 6, 3))
