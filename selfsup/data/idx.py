"""MNIST-style idx files (LeCun et al., http://yann.lecun.com/exdb/mnist/), plain or gzipped:
MNIST and Fashion-MNIST (Xiao et al. 2017).

idx layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian uint32,
then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from . import download as dl
from .imageset import DataError, ImageSet
from .roots import LoadRequest

_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
# Folder names used by the official archives, torchvision (<Name>/raw) and common copies.
FOLDERS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "FashionMNIST", "fashion_mnist")}
PREFIX = {"train": "train", "test": "t10k"}
# MNIST, Fashion-MNIST and KMNIST all ship under these names, and all have 10 classes; an idx
# file named otherwise (EMNIST, QMNIST, ...) is generic: up to max(N, 1000) classes are believed,
# so that a corrupt label (say 2**31 - 1) cannot make a head of two billion classes.
_FAMILY = {f"{p}-images{sep}idx3-ubyte" for p in PREFIX.values() for sep in "-."}
_FAMILY_CLASSES = 10
_UNNAMED_CLASSES = 1000


def _raw(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"cannot decompress {path}: {e} (truncated download?)") from e
    return data


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an idx file, in native byte order."""
    path = Path(path)
    data = _raw(path)
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than an idx header")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or code not in _DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an idx file: magic bytes {data[:4].hex()}, expected 0000 then a type code "
            f"(08 ubyte, 09 byte, 0b short, 0c int, 0d float, 0e double) and the number of dimensions"
        )
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"{path} is truncated inside its header ({len(data)} of {start} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = np.dtype(_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - start
    if found != expected:
        what = "is truncated" if found < expected else "has trailing bytes"
        raise DataError(f"{path} {what}: its header says {list(dims)} {dtype.name} ({expected} bytes of data), "
                        f"found {found} bytes")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _images(arr: np.ndarray, path: Path) -> np.ndarray:
    """idx images [N, H, W] (or [N, H, W, C]) -> uint8 [N, C, H, W]."""
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: idx images must be unsigned bytes (type 08), got {arr.dtype}")
    if arr.size == 0:
        what = "holds no images" if len(arr) == 0 else "has an empty dimension"
        raise DataError(f"{path} {what}: its header says {list(arr.shape)}")
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[3] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    raise DataError(f"{path}: expected idx images [N, H, W] or [N, H, W, C], got {list(arr.shape)}")


def _labels(path: Path, n: int, images: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integer labels [N], got {labels.dtype} {list(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{path} has {len(labels)} labels but {images} has {n} images")
    return labels.astype(np.int64)


def labels_file_for(images: Path) -> Path | None:
    """The labels file beside an images file (train-images-idx3-ubyte -> train-labels-idx1-ubyte)."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        return None
    for candidate in (images.with_name(name), images.with_name(name.removesuffix(".gz")),
                      images.with_name(name + ".gz") if not name.endswith(".gz") else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def read_idx_images(path: Path, name: str | None = None, classes: list[str] | None = None) -> ImageSet:
    """An idx images file, labelled when its labels file lies beside it."""
    images = _images(read_idx(path), path)
    lab = labels_file_for(path)
    labels = _labels(lab, len(images), path) if lab else None
    if labels is not None:
        if classes is not None:
            top, why = len(classes), f"the {len(classes)} classes of {name}"
        elif path.name.removesuffix(".gz") in _FAMILY:
            top, why = _FAMILY_CLASSES, f"an idx file named as MNIST's has {_FAMILY_CLASSES} classes"
        else:
            top, why = max(len(labels), _UNNAMED_CLASSES), (f"a generic idx set may have up to "
                                                            f"max(N, {_UNNAMED_CLASSES}) classes")
        if labels.min() < 0 or labels.max() >= top:
            raise DataError(f"{lab}: labels must be 0..{top - 1} ({why}), found {labels.min()}..{labels.max()}")
    return ImageSet(images, labels, classes if labels is not None else None,
                    name or path.name.split(".")[0].split("-")[0])


def find_idx(folder: Path, stem: str) -> Path | None:
    # "train-images.idx3-ubyte" is how several re-distributions spell the unzipped files.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_dataset(name: str, req: LoadRequest) -> ImageSet:
    req.check_split(name, tuple(PREFIX))
    stem = f"{PREFIX[req.split]}-images-idx3-ubyte"
    looked = []
    for root in req.roots:
        folders = [root / f for f in FOLDERS[name]] + [root / f / "raw" for f in FOLDERS[name]] + [root]
        for folder in folders:
            looked.append(folder / f"{stem}[.gz]")
            found = find_idx(folder, stem)
            if found:
                return _with_labels(found, name)
    if req.download:
        folder = req.download_root / name
        dl.download(name, folder)
        return _with_labels(folder / f"{stem}.gz", name)
    need = f"Each images file needs its labels file ({PREFIX[req.split]}-labels-idx1-ubyte) beside it."
    raise req.not_found(name, looked, dl.HOMEPAGES[name], extra=need)


def _with_labels(images: Path, name: str) -> ImageSet:
    if labels_file_for(images) is None:
        raise DataError(f"found {images} but no labels file beside it "
                        f"({images.name.replace('images', 'labels').replace('idx3', 'idx1')})")
    return read_idx_images(images, name, CLASSES[name])


def load_mnist(req: LoadRequest) -> ImageSet:
    return load_idx_dataset("mnist", req)


def load_fashion_mnist(req: LoadRequest) -> ImageSet:
    return load_idx_dataset("fashion-mnist", req)
