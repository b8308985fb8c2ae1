"""Image sets saved with numpy.savez.

Keys: images as `images_<split>` / `x_<split>` / `X_<split>`, or for the whole set `images` / `x`
/ `X`; labels likewise `labels[_<split>]` / `y[_<split>]` / `Y[_<split>]`; optional `classes`.
Images are uint8 in NHWC, NCHW or NHW (grayscale); float arrays within [0, 1] are scaled to
0..255. Files are read with allow_pickle=False, so an .npz cannot run code.

Labels are class indices. With `classes`, that array (1-d, of names or numbers, no repeats) is
the class list of every split in the file: each label of the file indexes it, and its last class
is some label of the file, since a list longer than the labels reach most likely names another
labelling (fine names with coarse labels). Without `classes`, the class count is the largest
label + 1, believed up to max(N, 1000): a label far beyond that (2**40 for 2 images) is a
corrupt label, not a class.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from .folder import WHOLE_SPLITS
from .imageset import DataError, ImageSet

_IMAGE_KEYS = ("images", "x", "X")
_LABEL_KEYS = ("labels", "y", "Y")
_CLASS_KEYS = ("classes", "class_names")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry; an empty zip
# Without class names, up to this many classes are believed whatever the number of images.
_UNNAMED_CLASSES = 1000


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
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic and magic not in _ZIP_MAGIC:
            raise DataError(f"{path} is not an .npz (a zip of .npy arrays, as numpy.savez writes): it "
                            f"starts with {magic!r}" + (", as an .npy does" if magic == b"\x93NUM" else ""))
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "it is empty (0 bytes)" if isinstance(e, EOFError) else e
        raise DataError(f"cannot read {path} as an .npz: {why}") from None
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
        images = _array(z, key, path)
        if images.size == 0:
            what = "holds no images" if images.ndim and not len(images) else "has an empty dimension"
            raise DataError(f"{where} {what}: shape {list(images.shape)}")
        images = to_nchw(to_uint8(images, where), where)
        label_key = _first(z, [k + suffix for k in _LABEL_KEYS])
        if label_key is None:
            return ImageSet(np.ascontiguousarray(images), None, None, path.stem)
        labels = _labels(_array(z, label_key, path), len(images), f"{path}[{label_key!r}]")
        class_key = _first(z, list(_CLASS_KEYS))
        if class_key is None:
            if labels.max() >= max(len(labels), _UNNAMED_CLASSES):
                raise DataError(f"{path}[{label_key!r}]: label {labels.max()} for {len(labels)} images; without "
                                f"a 'classes' array labels must be below max(N, {_UNNAMED_CLASSES}), so save "
                                f"the class names as 'classes' to declare more classes")
            classes = None
        else:
            classes = _classes(_array(z, class_key, path), f"{path}[{class_key!r}]")
            _check_reach(z, path, classes, f"{path}[{class_key!r}]")
    return ImageSet(np.ascontiguousarray(images), labels, classes, path.stem)


def _array(z, key: str, path: Path) -> np.ndarray:
    """One array of the archive, read (and its CRC checked) only now: damage is named by key."""
    try:
        return z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
        # ValueError also covers object arrays, which need pickle, which is refused; the last two
        # are a zip compression method zipfile lacks and an encrypted member.
        raise DataError(f"cannot read {path}[{key!r}]: {e}") from None


def _labels(a: np.ndarray, n: int, where: str) -> np.ndarray:
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers [N], got {a.dtype} {list(a.shape)}")
    if len(a) != n:
        raise DataError(f"{where}: {len(a)} labels for {n} images")
    if a.min() < 0:
        raise DataError(f"{where}: negative label {a.min()}")
    if a.max() > np.iinfo(np.int64).max:  # uint64 beyond int64 would turn negative
        raise DataError(f"{where}: label {a.max()} is no class index")
    return a.astype(np.int64)


def _classes(a: np.ndarray, where: str) -> list[str]:
    # A 0-d string array would otherwise be iterated letter by letter: "ab" -> ['a', 'b'].
    if a.ndim != 1 or a.dtype.kind not in "USiu" or not len(a):
        raise DataError(f"{where}: classes must be a 1-d array of names, got {a.dtype} {list(a.shape)}")
    try:
        names = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in a.tolist()]
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: a class name is not UTF-8: {e}") from None
    twice = [c for c, k in Counter(names).items() if k > 1]
    if twice:
        raise DataError(f"{where}: class {twice[0]!r} is listed twice")
    return names


def _check_reach(z, path: Path, classes: list[str], where: str) -> None:
    """`classes` is shared by every split of the file: compare it with all of their labels."""
    keys = [k for k in z.files if k in _LABEL_KEYS or k.split("_", 1)[0] in _LABEL_KEYS]
    tops = {}
    for k in keys:
        a = _array(z, k, path)
        if a.ndim == 1 and a.dtype.kind in "iu" and a.size:
            tops[k] = int(a.max())
            if a.min() < 0 or tops[k] >= len(classes):
                raise DataError(f"{path}[{k!r}]: labels must be 0..{len(classes) - 1}, one for each name "
                                f"in {where}, found {a.min()}..{a.max()}")
    reach = max(tops.values(), default=len(classes) - 1) + 1
    if reach < len(classes):
        raise DataError(f"{where} lists {len(classes)} classes but the labels of the file ({', '.join(tops)}) "
                        f"reach only {reach}: classes {classes[reach]!r} and after have no images")
