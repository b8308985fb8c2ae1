"""Feature extraction from a frozen backbone, done once and cached for every evaluator.

`FeatureCache` holds the features of one encoder per (images, layer or pool grid, resolution):
k-NN, the linear probe and every protocol after them in one invocation read the same extracted
features.

The pooled multi-layer feature (`pool=g`, eval.pool) is DCGAN's (Radford et al. 2015, §5.1, g=4;
Newmu/dcgan_code svhn/svhn_semisup_analysis.py pools each layer to 4x4 the same way): every layer's
map from `forward_maps`, max-pooled to a g x g grid (adaptive: a smaller map repeats cells),
flattened channel-major and concatenated in `layer_names` order, [N, sum_l C_l * g * g].

The backbone contract (see `selfsup.backbones`): an `nn.Module` with `dim`, `forward(x) -> [B, dim]`,
`layer_names`, `layer_dims` and `forward_layers(x, names) -> {name: [B, D_name]}` (pooled).
Images are uint8 `[N, C, H, W]`, normalised (and resized where asked) per chunk by the views'
deterministic `eval_transform`, the one place that turns stored pixels into network input.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from selfsup.device import PRECISIONS, autocast
from selfsup.views import eval_transform


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def kept_modes(module: nn.Module):
    """Gives every submodule its own train/eval flag back on leaving, whatever happened inside.

    Restoring per submodule, not with one `module.train(was_training)`, keeps deliberately
    frozen parts (e.g. BatchNorm left in eval during fine-tuning) as the caller had them.
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def frozen_eval(module: nn.Module):
    """Every submodule in eval mode inside, each one's own flag restored afterwards."""
    with kept_modes(module):
        module.eval()
        yield module


def _check_images(images) -> None:
    if hasattr(images, "chunks"):  # streamed from shards (selfsup/data/stream.py StreamImages)
        return
    if not isinstance(images, Tensor):
        raise TypeError(f"extract_features: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            "extract_features: images must be uint8 [N, C, H, W], "
            f"got {images.dtype} with shape {tuple(images.shape)}"
        )


def _check_layers(backbone: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):  # a bare string would otherwise be read as a list of characters
        layers = [layers]
    layers = list(layers)
    known = list(getattr(backbone, "layer_names", []))
    unknown = [n for n in layers if n not in known]
    if unknown or not layers:
        raise ValueError(
            f"extract_features: unknown layer(s) {unknown or layers} for "
            f"{type(backbone).__name__}; available: {known}"
        )
    return layers


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    layers: Sequence[str] | None = None,
    precision: str = "fp32",
    progress: bool = False,
    size: int | None = None,
    pool: int | None = None,
) -> Tensor | dict[str, Tensor]:
    """Runs a frozen backbone over all images and returns float32 features on `device`.

    Args:
        backbone: module following the backbone contract; used in eval mode, its previous
            train/eval flags restored afterwards.
        images: uint8 [N, C, H, W] on any device, or images streamed from shards
            (`selfsup.data.stream.StreamImages`); moved one chunk at a time to `device`.
        mean, std: per-channel normalisation in [0, 1] pixel units (length C, or 1).
        batch_size: images per forward pass.
        device: where the forward runs and the features stay (the backbone must already be
            there); default: the backbone's device.
        layers: if given, names from `backbone.layer_names`; returns {name: [N, D_name]}.
        precision: "fp32", or "bf16"/"fp16" for autocast on the device type.
        progress: show a tqdm bar.
        size: resize images to size x size before the forward (None: as stored).
        pool: g: the pooled multi-layer feature of every layer (module docstring) instead of the
            pooled output; not with `layers`.

    Returns:
        float32 [N, backbone.dim], [N, sum C_l * g * g] with `pool`, or a dict of float32
        [N, D_name] when `layers` is given.
    """
    _check_images(images)
    if precision not in PRECISIONS:
        raise ValueError(f"extract_features: precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else module_device(backbone)
    names = _check_layers(backbone, layers) if layers is not None else None
    if pool is not None and (pool < 1 or names is not None):
        raise ValueError(f"extract_features: pool={pool} must be at least 1 and not with layers")
    every = list(backbone.layer_names) if pool is not None else []

    n = images.shape[0]
    # Feed images in the layout the convolution weights are in (the trainer may have made them
    # channels-last), so that no layer converts back and forth.
    conv_w = next((p for p in backbone.parameters() if p.dim() == 4), None)
    channels_last = conv_w is not None and not conv_w.is_contiguous() and conv_w.is_contiguous(
        memory_format=torch.channels_last
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out: dict[str, Tensor] = {}  # name -> [N, D_name], allocated once the first chunk shows D
    key = "__pooled__"
    with frozen_eval(backbone), tqdm(total=n, unit="img", desc="features", disable=not progress) as bar:
        for start, x in _chunks(images, batch_size):
            x = x.to(device, non_blocking=True)
            x = eval_transform(x, mean, std, size).contiguous(memory_format=layout)  # [b, C, H, W]
            with autocast(device, precision):
                if pool is not None:
                    feats = {key: max_pooled_maps(backbone.forward_maps(x, every), pool)}
                elif names is not None:
                    feats = backbone.forward_layers(x, names)
                else:
                    feats = {key: backbone(x)}
            for name, f in feats.items():
                if names is not None and name not in names:
                    continue
                if f.dim() != 2 or f.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"extract_features: {type(backbone).__name__} returned shape {tuple(f.shape)} "
                        f"for {'layer ' + repr(name) if name != key else 'forward'}; expected [{x.shape[0]}, D]"
                    )
                if name not in out:
                    out[name] = torch.empty(n, f.shape[1], dtype=torch.float32, device=device)
                out[name][start : start + x.shape[0]] = f  # casts bf16 -> float32
            bar.update(x.shape[0])

    if n == 0:  # no forward ran: size the empty outputs from the declared dimensions
        if pool is not None:
            dim = sum(int(backbone.layer_dims[name]) for name in every) * pool * pool
            out[key] = torch.empty(0, dim, device=device)
        elif names is None:
            out[key] = torch.empty(0, int(backbone.dim), device=device)
        else:
            out = {name: torch.empty(0, int(backbone.layer_dims[name]), device=device) for name in names}
    if names is None:
        return out[key]
    missing = [name for name in names if name not in out]
    if missing:
        raise ValueError(f"extract_features: {type(backbone).__name__}.forward_layers did not return {missing}")
    return {name: out[name] for name in names}


def _chunks(images, batch_size: int):
    """(start, uint8 [b, C, H, W]) over `images` in order: slices of a tensor, or the chunks a
    stream decodes (`StreamImages.chunks`)."""
    if hasattr(images, "chunks"):
        start = 0
        for x in images.chunks(batch_size):
            yield start, x
            start += x.shape[0]
    else:
        for start in range(0, images.shape[0], batch_size):
            yield start, images[start : start + batch_size]


def max_pooled_maps(maps: dict[str, Tensor], grid: int) -> Tensor:
    """{name: [B, C, h, w]} -> [B, sum C * grid * grid]: each map max-pooled to grid x grid
    (adaptive), flattened channel-major, concatenated in the dict's order."""
    return torch.cat([F.adaptive_max_pool2d(m, grid).flatten(1) for m in maps.values()], dim=1)


class FeatureCache:
    """The features of one frozen encoder, extracted once per (images, layer or pool grid, size).

    backbone, mean, std, batch_size, device, precision, progress: as in `extract_features`.
    Images are recognised by identity (the cache keeps a reference, so an id is never reused):
    pass the same tensor (an ImageSet's `.images`) to every protocol that should share features.
    A new encoder, or the same one after more training, needs a new cache.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], *,
                 batch_size: int = 512, device: torch.device | str | None = None,
                 precision: str = "fp32", progress: bool = False):
        self.backbone = backbone
        self.mean, self.std = mean, std
        self.kwargs = dict(batch_size=batch_size, device=device, precision=precision, progress=progress)
        # (images id, layer name | None (pooled output) | ("pool", g), size) -> features
        self._cache: dict[tuple, Tensor] = {}
        self._images: dict[int, Tensor] = {}
        self.extractions = 0  # forward passes over a whole image set, for tests and logs

    def features(self, images: Tensor, layer: str | None = None, size: int | None = None,
                 pool: int | None = None) -> Tensor:
        """float32 [N, D]: the pooled output (layer None), `layer`'s pooled output, or with
        `pool` (layer None) every layer max-pooled to a pool x pool grid and concatenated, of
        `images` (uint8 [N, C, H, W]) resized to `size`, extracted on the first request only."""
        if pool is None:
            return self.layers(images, [layer], size)[layer]
        if layer is not None:
            raise ValueError(f"FeatureCache.features: pool={pool} spans every layer; layer must be None")
        key = (id(images), ("pool", pool), size)
        self._images.setdefault(id(images), images)
        if key not in self._cache:
            self._cache[key] = extract_features(self.backbone, images, self.mean, self.std, size=size,
                                                pool=pool, **self.kwargs)
            self.extractions += 1
        return self._cache[key]

    def layers(self, images: Tensor, layers: Sequence[str | None], size: int | None = None
               ) -> dict[str | None, Tensor]:
        """{layer: [N, D_layer]} for several layers (None: the pooled output); the intermediate
        layers not cached yet are extracted together, in one pass over the images."""
        key = id(images)
        self._images.setdefault(key, images)
        missing = [name for name in layers if (key, name, size) not in self._cache]
        named = [name for name in missing if name is not None]
        if named:
            out = extract_features(self.backbone, images, self.mean, self.std, layers=named,
                                   size=size, **self.kwargs)
            self._cache.update({(key, name, size): f for name, f in out.items()})
            self.extractions += 1
        if None in missing:
            self._cache[(key, None, size)] = extract_features(self.backbone, images, self.mean,
                                                              self.std, size=size, **self.kwargs)
            self.extractions += 1
        return {name: self._cache[(key, name, size)] for name in layers}
