"""Image sets saved with numpy.savez.

Keys: images as `images_<split>` / `x_<split>` / `X_<split>`, or for the whole set `images` / `x`
/ `X`; labels likewise `labels[_<split>]` / `y[_<split>]` / `Y[_<split>]`; optional `classes`.
Images are uint8 in NHWC, NCHW or NHW (grayscale); float arrays within [0, 1] are scaled to
0..255. Files are read with allow_pickle=False, so an .npz cannot run code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .folder import WHOLE_SPLITS
from .imageset import DataError, ImageSet

_IMAGE_KEYS = ("images", "x", "X")
_LABEL_KEYS = ("labels", "y", "Y")


def _first(z, keys: list[str]) -> str | None:
    return next((k for k in keys if k in z.files), None)


def to_nchw(a: np.ndarray, where: str) -> np.ndarray:
    """uint8 NCHW from NHWC, NCHW or NHW; channels are the axis of size 1 or 3."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise DataError(f"{where}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W], got {list(a.shape)}")
    if a.shape[3] in (1, 3):  # numpy's usual layout wins when both axes could be channels
        return a.transpose(0, 3, 1, 2)
    if a.shape[1] in (1, 3):
        return a
    raise DataError(f"{where}: no channel axis of size 1 or 3 in shape {list(a.shape)}")


def to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8)
        raise DataError(f"{where}: float images must lie in [0, 1], found {lo:g}..{hi:g}; "
                        f"save uint8 0..255 images instead")
    raise DataError(f"{where}: images must be uint8 (or float in [0, 1]), got {a.dtype}; "
                    f"convert with .astype(np.uint8) if the values are 0..255")


def read_npz(path: Path, split: str = "train") -> ImageSet:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as an .npz: {e}") from e
    with z:
        split_keys = [f"{k}_{split}" for k in _IMAGE_KEYS]
        key = _first(z, split_keys)
        suffix = f"_{split}"
        if key is None and split in WHOLE_SPLITS:
            key, suffix = _first(z, list(_IMAGE_KEYS)), ""
        if key is None:
            looked = split_keys + (list(_IMAGE_KEYS) if split in WHOLE_SPLITS else [])
            raise DataError(f"{path}: no images for split {split!r}; looked for keys {', '.join(looked)}; "
                            f"the file has {', '.join(z.files) or 'no arrays'}")
        where = f"{path}[{key!r}]"
        try:
            images = to_nchw(to_uint8(z[key], where), where)
            label_key = _first(z, [k + suffix for k in _LABEL_KEYS])
            labels = _labels(z[label_key], len(images), f"{path}[{label_key!r}]") if label_key else None
            class_key = _first(z, ["classes", "class_names"])
            classes = [str(c) for c in z[class_key].tolist()] if class_key and labels is not None else None
        except ValueError as e:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: {e}") from e
    if classes is not None and len(labels) and labels.max() >= len(classes):
        raise DataError(f"{path}: label {labels.max()} but only {len(classes)} classes")
    return ImageSet(np.ascontiguousarray(images), labels, classes, path.stem)


def _labels(a: np.ndarray, n: int, where: str) -> np.ndarray:
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers [N], got {a.dtype} {list(a.shape)}")
    if len(a) != n:
        raise DataError(f"{where}: {len(a)} labels for {n} images")
    if n and a.min() < 0:
        raise DataError(f"{where}: negative label {a.min()}")
    return a.astype(np.int64)
