"""View configs and the view pipelines built from them.

A ``ViewConfig`` describes one family of random views; ``build_views`` turns it into a callable
that maps a uint8 batch to ``n_views`` normalised float batches, all on the batch's device:

    views = build_views(ViewConfig(), mean=CIFAR_MEAN, std=CIFAR_STD)
    g = torch.Generator(device=images.device).manual_seed(seed)
    v1, v2 = views(images, g)        # each [B, C, 32, 32] float32

Methods with asymmetric views (BYOL's two views, DINO's global and local crops) combine several
configs with ``build_view_set``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops


@dataclass
class ViewConfig:
    """Random views of a batch; defaults are SimCLR's CIFAR-10 recipe (Chen et al. 2020, B.9).

    Args:
        n_views: number of independently drawn views returned per call.
        size: side of the square output crop, in pixels.
        scale: [min, max] area of the crop as a fraction of the image (RandomResizedCrop).
        ratio: [min, max] aspect ratio (width / height) of the crop, drawn log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of colour jitter (brightness, contrast, saturation, hue).
        brightness: brightness factor drawn from [max(0, 1 - brightness), 1 + brightness].
        contrast: contrast factor drawn from [max(0, 1 - contrast), 1 + contrast].
        saturation: saturation factor drawn from [max(0, 1 - saturation), 1 + saturation].
        hue: hue shift drawn from [-hue, hue], in turns of the colour wheel (at most 0.5).
        gray_p: probability of converting to grayscale (ITU-R 601 luma).
        blur_p: probability of a Gaussian blur with SimCLR's kernel (10 % of ``size``).
        blur_sigma: [min, max] of the blur's standard deviation, in output pixels.
        solarize_p: probability of solarizing (inverting pixels >= 0.5), as in BYOL.
        rotate_p: probability of a rotation by 90, 180 or 270 degrees (one of the three,
            uniformly) counter-clockwise, as ``torch.rot90``; views are square, so the shape
            is kept.
        sobel_p: probability of replacing the view by the Sobel gradient magnitude of its luma
            (3x3 kernels, replicate padding, scaled to [0, 1]) in every channel.
        noise_p: probability of adding Gaussian noise, independent per pixel and channel, then
            clamping to [0, 1].
        noise_std: [min, max] of the noise's standard deviation, uniform per image, in [0, 1]
            pixel units.
        cutout_p: probability of Cutout (DeVries & Taylor 2017): one square hole, centred on a
            uniformly drawn pixel and clipped at the border.
        cutout_size: [min, max] of the hole's side as a fraction of ``size``, uniform per
            image. The default spans DeVries & Taylor's best sides on 32-pixel images: 8 px
            (CIFAR-100) and 16 px (CIFAR-10).
        cutout_value: the hole's fill in [0, 1] pixel units, before normalisation; 0 is black.
            DeVries & Taylor fill with 0 after normalisation, i.e. the dataset mean (about 0.47
            on CIFAR-10).

    The ops run in one fixed order: crop and flip, rotation, colour jitter, grayscale, blur,
    solarize, Sobel, noise, cutout. Rotation is geometry, so it goes with the crop (it
    commutes with the colour ops and the blur anyway). Sobel keeps only the edges of the
    luma, so it follows the colour ops and precedes the noise and the hole, whose own edges
    it would otherwise show. The hole comes last, so that it is exactly ``cutout_value``.
    Rotation, Sobel, noise and cutout are off by default, and an op whose probability is 0
    draws nothing, so a config that leaves them off gets the same views from the same seed as
    before they existed.

    Pairs are lists rather than tuples so that OmegaConf structured configs accept them.
    """

    n_views: int = 2
    size: int = 32
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize_p: float = 0.0
    rotate_p: float = 0.0
    sobel_p: float = 0.0
    noise_p: float = 0.0
    noise_std: list[float] = field(default_factory=lambda: [0.05, 0.2])
    cutout_p: float = 0.0
    cutout_size: list[float] = field(default_factory=lambda: [0.25, 0.5])
    cutout_value: float = 0.0

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: ViewConfig) -> None:
    """Raise ValueError naming the first bad field of ``cfg`` by its key under `views` (an
    `extra_views` entry's own check renames it)."""

    def bad(name: str, why: str) -> None:
        raise ValueError(f"views.{name}={getattr(cfg, name)!r}: {why}")

    if int(cfg.n_views) < 1:
        bad("n_views", "need at least one view")
    if int(cfg.size) < 1:
        bad("size", "must be a positive number of pixels")
    for name, upper in (("scale", 1.0), ("ratio", None), ("blur_sigma", None),
                        ("cutout_size", 1.0)):
        pair = list(getattr(cfg, name))
        if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (upper and pair[1] > upper):
            limit = f" <= {upper}" if upper else ""
            bad(name, f"must be [min, max] with 0 < min <= max{limit}")
    for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p", "rotate_p", "sobel_p",
                 "noise_p", "cutout_p"):
        if not 0 <= getattr(cfg, name) <= 1:
            bad(name, "a probability must lie in [0, 1]")
    std = list(cfg.noise_std)
    if len(std) != 2 or not 0 <= std[0] <= std[1]:
        bad("noise_std", "must be [min, max] with 0 <= min <= max")
    if not 0 <= cfg.cutout_value <= 1:
        bad("cutout_value", "must lie in [0, 1] (pixel units, before normalisation)")
    for name in ("brightness", "contrast", "saturation"):
        if getattr(cfg, name) < 0:
            bad(name, "a jitter strength must be >= 0")
    if not 0 <= cfg.hue <= 0.5:
        bad("hue", "must lie in [0, 0.5]")


def _as_config(cfg: object) -> ViewConfig:
    if isinstance(cfg, ViewConfig):
        validate(cfg)  # fields may have been edited after construction
        return cfg
    # dicts and OmegaConf nodes: merging into the schema rejects unknown keys and bad types
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ViewConfig), cfg))


def _check_images(images: Tensor, g: torch.Generator) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        what = f"{images.dtype} tensor of shape {tuple(images.shape)}" \
            if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"views expect a uint8 batch [B, C, H, W], got a {what}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"views handle 1- or 3-channel images, got {images.shape[1]} channels")
    if g.device.type != images.device.type:
        raise ValueError(f"generator is on {g.device} but the images are on {images.device}; "
                         "create it with torch.Generator(device=images.device)")


class Views:
    """``n_views`` random views of a uint8 batch; build with ``build_views``.

    Every parameter (crop box, flip, rotation, jitter factors, grayscale, blur, solarize,
    Sobel, noise strength and the noise itself, cutout hole) is drawn first for all
    ``n_views * B`` images at once, so each image in each view gets its own draw and the draws
    do not depend on how the work is split. On CPU the pixels are then processed in
    chunks of about ``cpu_chunk_pixels`` output pixels per channel, so that the few dozen
    elementwise passes of colour jitter stay in cache instead of streaming the whole batch
    through memory each time (2x faster at 32 x 32 on a 2-core machine). On GPU the whole
    batch is one chunk. The views are consecutive slices of one [n_views * B, ...] tensor.
    """

    cpu_chunk_pixels = 256 * 32 * 32

    def __init__(self, cfg: ViewConfig, mean: Sequence[float], std: Sequence[float]):
        self.cfg = cfg
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} need one entry per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive")

    @property
    def n_views(self) -> int:
        return self.cfg.n_views

    def draw(self, n: int, height: int, width: int, g: torch.Generator,
             device: torch.device, channels: int) -> dict[str, Tensor]:
        """All random parameters for ``n`` output images from ``channels``-channel
        ``height`` x ``width`` inputs, as ``[n, ...]`` tensors.

        Rotation, Sobel, noise and cutout draw after the older ops, so switching them on
        leaves the older ops' draws unchanged."""
        c = self.cfg
        p = {"boxes": ops.sample_crop_boxes(n, height, width, c.scale, c.ratio, g, device),
             "flip": ops.draw_flips(n, c.flip_p, g, device)}
        if c.jitter_p > 0:
            p["jitter"] = ops.draw_jitter(n, c.brightness, c.contrast, c.saturation, c.hue,
                                          c.jitter_p, g, device)
        if c.gray_p > 0:
            p["gray"] = ops.draw_mask(n, c.gray_p, g, device)
        if c.blur_p > 0:
            p["sigma"] = ops.draw_blur_sigma(n, c.blur_sigma, c.blur_p, g, device)
        if c.solarize_p > 0:
            p["solarize"] = ops.draw_mask(n, c.solarize_p, g, device)
        if c.rotate_p > 0:
            p["turns"] = ops.draw_rotations(n, c.rotate_p, g, device)
        if c.sobel_p > 0:
            p["sobel"] = ops.draw_mask(n, c.sobel_p, g, device)
        if c.noise_p > 0:
            p["noise_std"], p["noise"] = ops.draw_noise(n, channels, c.size, c.size, c.noise_std,
                                                        c.noise_p, g, device)
        if c.cutout_p > 0:
            p["cutout"] = ops.draw_cutout(n, c.size, c.size, c.cutout_size, c.cutout_p, g, device)
        return p

    def apply(self, images: Tensor, params: dict[str, Tensor], out: Tensor | None = None
              ) -> Tensor:
        """The views of ``images`` [n, C, H, W] uint8 under ``params`` (from ``draw``)."""
        c = self.cfg
        x = ops.resized_crop(images, params["boxes"], c.size, params["flip"], 1 / 255)
        if "turns" in params:
            x = ops.rotate90(x, params["turns"])
        if "jitter" in params:
            enabled = (c.brightness > 0, c.contrast > 0, c.saturation > 0, c.hue > 0)
            x = ops.jitter(x, params["jitter"], enabled)
        if "gray" in params:
            x = ops.to_grayscale(x, params["gray"])
        if "sigma" in params:
            x = ops.blur(x, params["sigma"], ops.default_blur_kernel(c.size))
        if "solarize" in params:
            x = ops.solarize_with(x, params["solarize"])
        if "sobel" in params:
            x = ops.sobel_with(x, params["sobel"])
        if "noise" in params:
            x = ops.add_noise(x, params["noise_std"], params["noise"])
        if "cutout" in params:
            x = ops.cutout_with(x, params["cutout"], c.cutout_value)
        return ops.normalize(x, self.mean, self.std, out=out)

    def __call__(self, images: Tensor, g: torch.Generator) -> list[Tensor]:
        _check_images(images, g)
        # an enclosing autocast would run the crop matmuls and the blur in bf16
        with torch.autocast(images.device.type, enabled=False):
            return self._views(images, g)

    def _views(self, images: Tensor, g: torch.Generator) -> list[Tensor]:
        c = self.cfg
        b, ch, h, w = images.shape
        n = c.n_views * b
        params = self.draw(n, h, w, g, images.device, ch)
        out = torch.empty(n, ch, c.size, c.size, device=images.device)
        step = n
        if images.device.type == "cpu":
            step = max(1, self.cpu_chunk_pixels // (c.size * c.size))
        for start in range(0, n, step):
            stop = min(start + step, n)
            first = start % b
            if first + stop - start <= b:  # within one view's copy of the batch: a free slice
                src = images[first:first + stop - start]
            else:
                src = images[torch.arange(start, stop, device=images.device) % b]
            chunk = {k: v[start:stop] for k, v in params.items()}
            self.apply(src, chunk, out=out[start:stop])
        return list(out.chunk(c.n_views))

    def __repr__(self) -> str:
        return f"Views({self.cfg}, mean={self.mean}, std={self.std})"


def build_views(cfg: ViewConfig, mean: Sequence[float], std: Sequence[float]) -> Views:
    """Views for ``cfg`` (a ViewConfig, or a dict / OmegaConf node of its fields)."""
    return Views(_as_config(cfg), mean, std)


class ViewSet:
    """Several ``Views`` called in turn on the same batch; their outputs are concatenated."""

    def __init__(self, parts: Sequence[Views]):
        self.parts = list(parts)

    @property
    def n_views(self) -> int:
        return sum(p.n_views for p in self.parts)

    def __call__(self, images: Tensor, g: torch.Generator) -> list[Tensor]:
        return [v for part in self.parts for v in part(images, g)]


def build_view_set(cfgs: Sequence[ViewConfig], mean: Sequence[float],
                   std: Sequence[float]) -> ViewSet:
    """Views from several configs, e.g. BYOL's asymmetric pair or DINO's global + local crops."""
    return ViewSet([build_views(c, mean, std) for c in cfgs])


def eval_transform(images: Tensor, mean: Sequence[float], std: Sequence[float],
                   size: int | None = None) -> Tensor:
    """Deterministic counterpart of the views: uint8 [B, C, H, W] -> normalised float32.

    Resized (bilinear, antialiased) to ``size`` x ``size`` only when the images differ from it.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("eval_transform expects a uint8 batch [B, C, H, W]")
    x = images.float().div_(255)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)
    return ops.normalize(x, mean, std)


# ----------------------------------------------------------------------------- presets


def simclr(size: int = 32, n_views: int = 2) -> ViewConfig:
    """SimCLR: strength-0.5 jitter and no blur for small images (CIFAR, B.9), strength 1.0
    and blur with probability 0.5 at ImageNet scale (appendix A)."""
    if size <= 64:
        return ViewConfig(n_views=n_views, size=size)
    return ViewConfig(n_views=n_views, size=size, brightness=0.8, contrast=0.8, saturation=0.8,
                      hue=0.2, blur_p=0.5)


def byol(size: int = 224) -> list[ViewConfig]:
    """BYOL's asymmetric pair (Grill et al. 2020, table 6): blur always on the first view,
    rarely on the second, solarize only on the second."""
    common = {"n_views": 1, "size": size, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
              "hue": 0.1}
    return [ViewConfig(**common, blur_p=1.0, solarize_p=0.0),
            ViewConfig(**common, blur_p=0.1, solarize_p=0.2)]



def multicrop(global_size: int = 224, local_size: int = 96, n_local: int = 8,
              global_scale: Sequence[float] = (0.4, 1.0),
              local_scale: Sequence[float] = (0.05, 0.4)) -> list[ViewConfig]:
    """DINO's multi-crop (Caron et al. 2021, appendix; main_dino.py DataAugmentationDINO): BYOL's
    asymmetric pair as the two global crops, then ``n_local`` small crops blurred half the time.
    The scales are DINO's ImageNet ones. Small images (<= 64 px) get no blur, as in solo-learn's
    CIFAR recipes."""
    small = global_size <= 64
    views = [replace(v, scale=list(global_scale), blur_p=0.0 if small else v.blur_p)
             for v in byol(global_size)]
    if n_local > 0:
        views.append(replace(views[0], n_views=n_local, size=local_size, scale=list(local_scale),
                             blur_p=0.0 if small else 0.5))
    return views
