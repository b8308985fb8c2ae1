"""The Python API: a trained encoder in two lines, and the commands as functions.

    import selfsup
    enc = selfsup.load("runs/quick_cifar10")       # a run folder (or a checkpoint in it)
    z = enc.embed(images)                          # float32 [N, D], as the evaluators see them

    run = selfsup.pretrain("quick", trainer={"epochs": 2})     # = selfsup pretrain -r quick trainer.epochs=2
    res = selfsup.evaluate(run, "knn,linear", eval={"knn": {"k": 20}})
    res["linear"]["top1"]

`pretrain` and `evaluate` run exactly what the commands run (selfsup/cli.py) and return what the
commands print and write: the run folder, and {protocol: result} as in RUN/eval_<protocol>.json.
Settings are given as "key.sub=value" strings, as nested dicts per section, or both. Bad input
raises `selfsup.errors.SelfsupError` (ConfigError, DataError, ...) with the command's one line.

`embed` takes what a user has at hand: one PIL image or a list of them (any sizes and modes), a
uint8 numpy array or tensor in NHWC or NCHW (one image: HWC or CHW), or a list of arrays. It
applies the run's own preparation: images are decoded as the data readers decode them (EXIF
orientation, alpha dropped), brought to the run's `data.image_size` (shorter side, then centre
crop; PIL images and lists of arrays one by one with Pillow, as the file readers do, one array
of a batch at once with torch, as the array readers do) where it set one, mapped to the
encoder's channels (grey repeated to RGB; RGB to grey by ITU-R 601 luma, as Pillow's "L"),
resized to the evaluation size and normalised with the run's normalization.json. A batch that
the data reader would hold unchanged therefore gives the features of `selfsup eval` (to float
rounding: 3e-8 measured where only the memory layout differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.config import Config
from selfsup.data.decode import resize_crop, resize_images, stack, to_array, upright
from selfsup.data.imageset import match_channels
from selfsup.eval.features import extract_features
from selfsup.runfolder import RunFolderError

@dataclass
class Encoder:
    """A trained (or random-init) encoder with the preparation its run used.

    model: the plain backbone `nn.Module` (pooled features from `model(x)` on normalised float
        input [N, C, size, size]; `model.forward_layers(x, names)` for intermediate layers).
    config: the run's config. run: its folder. mean, std: its normalisation (in [0, 1] units).
    size: the evaluation resolution (eval.size, else views.size). image_size: data.image_size.
    """

    model: nn.Module
    config: Config
    run: Path
    mean: list[float]
    std: list[float]
    size: int
    image_size: int | None

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def layer_names(self) -> list[str]:
        return list(getattr(self.model, "layer_names", []))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Encoder":
        self.model.to(device)
        return self

    def prepare(self, images: Any, layout: str = "auto") -> Tensor:
        """uint8 [N, C, H, W] with the encoder's channels, at the run's data.image_size where set,
        from PIL images, arrays or tensors (see the module's docstring). layout: "auto", "nchw"
        or "nhwc" (auto reads it from which axis has 1 or 3 entries; say it where both do)."""
        return _to_batch(images, self.channels, self.image_size, layout)

    def embed(self, images: Any, *, layout: str = "auto", batch_size: int = 256,
              precision: str = "fp32", progress: bool = False) -> Tensor:
        """float32 [N, D] pooled features of `images` on the encoder's device."""
        return extract_features(self.model, self.prepare(images, layout), self.mean, self.std,
                                batch_size=batch_size, precision=precision, progress=progress,
                                size=self.size)

    def layers(self, images: Any, names: Sequence[str] | str | None = None, *, layout: str = "auto",
               batch_size: int = 256, precision: str = "fp32") -> dict[str, Tensor]:
        """{layer: float32 [N, D_layer]}, each layer's pooled output (the every-layer probes'
        features); names: some of `layer_names` (None: all of them)."""
        return extract_features(self.model, self.prepare(images, layout), self.mean, self.std,
                                batch_size=batch_size, precision=precision, size=self.size,
                                layers=self.layer_names if names is None else names)

    def __repr__(self) -> str:
        return (f"Encoder({self.config.backbone.name}, method {self.config.method.name}, "
                f"{self.channels} channels, {self.size} px, dim {self.dim}, run {self.run})")


def load(run: str | Path, *, device: str | torch.device = "cpu", random_init: bool = False) -> Encoder:
    """The encoder of a run folder (or of a checkpoint folder or file inside it): its
    encoder.safetensors, else its newest checkpoint that verifies. random_init: the network the
    run started from, the baseline of every evaluation. In eval mode on `device`."""
    from selfsup.run import find_run_dir, load_encoder, load_run_config
    from selfsup.runfolder import RunFolder
    from selfsup.train.checkpoint import PREFIX

    run_dir = find_run_dir(run)
    cfg = load_run_config(run_dir)
    stats = RunFolder(run_dir).read_stats()
    if stats is None:
        raise RunFolderError(f"{RunFolder(run_dir).normalization} is missing: the run never started "
                             f"training, so its normalisation is unknown")
    mean, std = stats
    p = Path(run)  # a checkpoint or a .safetensors file inside the run: those weights
    weights = p if p.suffix == ".safetensors" or (p.is_dir() and p.name.startswith(PREFIX)) else run_dir
    model = load_encoder(weights, cfg, len(mean), random_init=random_init)
    return Encoder(model.to(device).eval(), cfg, run_dir, list(mean), list(std),
                   cfg.eval.size or cfg.views.size, cfg.data.image_size)


def _dotted(overrides: Sequence[str], sections: dict[str, Any]) -> list[str]:
    """"key.sub=value" strings from strings and nested dicts ({"trainer": {"epochs": 2}})."""
    out = [str(o) for o in overrides]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}={_value(value)}")

    for name, value in sections.items():
        walk(name, value)
    return out


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def pretrain(recipe: str = "quick", *overrides: str, run_dir: str | Path | None = None,
             overwrite: bool = False, resume: str | Path | None = None, **sections: Any) -> Path:
    """`selfsup pretrain`: trains and returns the run folder. recipe: a shipped recipe's name or a
    YAML path; overrides / sections: settings (see the module's docstring); run_dir, overwrite,
    resume: as the command's --run-dir, --overwrite, --resume RUN."""
    from selfsup.cli import parse

    argv = ["pretrain", "--recipe", str(recipe)]
    argv += ["--run-dir", str(run_dir)] if run_dir is not None else []
    argv += ["--overwrite"] if overwrite else []
    argv += ["--resume", str(resume)] if resume is not None else []
    args = parse([*argv, *_dotted(overrides, sections)])
    return args.func(args)


def evaluate(run: str | Path, protocol: str, *overrides: str, recipe: str | None = None,
             random_init: bool = False, checkpoints: bool = False, **sections: Any) -> dict:
    """`selfsup eval PROTOCOL RUN`: {protocol: result} (top1, the protocol line, per-layer
    results, ...; with checkpoints=True each protocol's points and correlation). protocol: knn,
    linear, finetune, retrieval, zeroshot, or several joined by commas."""
    from selfsup.cli import parse

    argv = ["eval", protocol, str(run)]
    argv += ["--recipe", str(recipe)] if recipe is not None else []
    argv += ["--random-init"] if random_init else []
    argv += ["--checkpoints"] if checkpoints else []
    args = parse([*argv, *_dotted(overrides, sections)])
    return args.func(args)


# --- images in, uint8 [N, C, H, W] out ---------------------------------------------------------

def _is_pil(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


def _to_batch(images: Any, channels: int, image_size: int | None, layout: str) -> Tensor:
    if layout not in ("auto", "nchw", "nhwc"):
        raise ValueError(f"layout={layout!r}: choose auto, nchw or nhwc")
    if _is_pil(images) or (isinstance(images, (list, tuple)) and images and _is_pil(images[0])):
        pics = [images] if _is_pil(images) else list(images)
        if not all(_is_pil(p) for p in pics):
            raise TypeError("embed: a list of images must be all PIL images or all arrays")
        x = _from_arrays([to_array(upright(p)) for p in pics], image_size)
    elif isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("embed: no images given")
        hwc = [_one_hwc(_as_uint8(a), channels, layout) for a in images]
        x = _from_arrays(hwc, image_size)
    else:
        t = _as_uint8(images)
        if t.dim() == 3:  # one image (CHW or HWC), else a batch of grey images [N, H, W]
            one = t.shape[0] in (1, 3, channels) or t.shape[2] in (1, 3, channels)
            t = t[None] if one else t[:, None]
        if t.dim() != 4:
            raise ValueError(f"embed: images must be [N, C, H, W] or [N, H, W, C] (one image: 3 "
                             f"dimensions), got shape {tuple(t.shape)}")
        if _channel_axis(t.shape, channels, layout) == 3:
            t = t.permute(0, 3, 1, 2)
        x = t.contiguous()
        if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
            x = resize_images(x, image_size)
    try:
        return match_channels(x, channels)
    except ValueError as e:
        raise ValueError(f"embed: {e}") from None


def _as_uint8(a: Any) -> Tensor:
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a)
        a = a if a.flags.writeable else a.copy()  # e.g. np.asarray(PIL image) is read-only
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    if not isinstance(t, Tensor):
        raise TypeError(f"embed: expected PIL images, numpy arrays or tensors, got {type(a).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"embed: images must be uint8 (0-255), got {t.dtype}; convert with "
                        f"(x * 255).round().clamp(0, 255).to(torch.uint8) if they are in [0, 1]")
    return t.cpu()


def _channel_axis(shape: Sequence[int], channels: int, layout: str) -> int:
    """1 (NCHW) or 3 (NHWC) of a 4-d shape."""
    if layout != "auto":
        return 1 if layout == "nchw" else 3
    first, last = shape[1] in (1, 3, channels), shape[3] in (1, 3, channels)
    if first and last:
        raise ValueError(f"embed: shape {tuple(shape)} could be NCHW or NHWC: pass layout='nchw' or 'nhwc'")
    if not (first or last):
        raise ValueError(f"embed: shape {tuple(shape)} has no channel axis of 1 or 3 entries")
    return 1 if first else 3


def _one_hwc(t: Tensor, channels: int, layout: str) -> np.ndarray:
    """One image as the decoder gives it: uint8 [H, W] or [H, W, 3]."""
    if t.dim() == 2:
        return t.numpy()
    if t.dim() != 3:
        raise ValueError(f"embed: each image in a list must be [H, W], [C, H, W] or [H, W, C], "
                         f"got shape {tuple(t.shape)}")
    axis = _channel_axis((1, *t.shape), channels, layout)
    hwc = t if axis == 3 else t.permute(1, 2, 0)
    return hwc[..., 0].numpy() if hwc.shape[-1] == 1 else np.ascontiguousarray(hwc.numpy())


def _from_arrays(arrays: list[np.ndarray], image_size: int | None) -> Tensor:
    """The readers' way: each image to image_size (shorter side, centre crop), then stacked; with
    no image_size the images must share one size, as a data folder's must."""
    if image_size is not None:
        arrays = [resize_crop(a, image_size) for a in arrays]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"embed: the images differ in size ({sorted(sizes)[:3]}) and the run sets no "
                         f"data.image_size to bring them to one; resize them first")
    return torch.from_numpy(stack(arrays))
