"""Dataset names, and load_dataset: a name or a path in, an ImageSet out."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from pathlib import Path

from . import cifar, idx, stl10
from .decode import resize_images
from .digits import load_digits
from .folder import is_tar, load_image_folder
from .imageset import DataError, ImageSet
from .npz import read_npz
from .roots import LoadRequest, search_roots

DATASETS: dict[str, Callable[[LoadRequest], ImageSet]] = {
    "digits": load_digits,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "mnist": idx.load_mnist,
    "fashion-mnist": idx.load_fashion_mnist,
    "stl10": stl10.load_stl10,
}
ALIASES = {
    "cifar-10": "cifar10", "cifar-100": "cifar100", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "stl-10": "stl10",
}
_SPLIT_ALIASES = {"unlabelled": "unlabeled", "training": "train", "testing": "test",
                  "valid": "val", "validation": "val"}


def known_datasets() -> list[str]:
    return list(DATASETS)


def normalize_split(split: str) -> str:
    s = str(split).strip().lower()
    return _SPLIT_ALIASES.get(s, s)


def _looks_like_path(source: str) -> bool:
    return any(ch in source for ch in ("/", "\\")) or source.startswith((".", "~"))


def load_dataset(
    source: str | os.PathLike,
    split: str = "train",
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    cache: bool = True,
    download: bool = False,
    strict: bool = False,
) -> ImageSet:
    """Load one split of a dataset as an ImageSet (uint8 [N, C, H, W] on the CPU).

    source: a dataset name (see known_datasets()) or a path to an image folder, a .tar/.tar.gz/
        .tgz of one, an .npz, an idx images file, or an extracted official folder.
    split: train | test | unlabeled (STL-10) | val ...; "unlabelled" is accepted too.
    root: folder holding named datasets (default $SELFSUP_DATA, then ~/.cache/selfsup/data).
    image_size: make every image image_size x image_size (shorter side resized, centre crop).
    cache: reuse decoded arrays of image folders and tars from $SELFSUP_CACHE.
    download: fetch a missing official dataset into the data root, checking its md5.
    strict: raise on the first undecodable image instead of skipping it with a warning.
    """
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
            raise DataError(f"data.image_size must be a whole number of pixels, got {image_size!r}")
        image_size = int(image_size)
        if image_size <= 0:
            raise DataError(f"data.image_size must be a positive number of pixels, got {image_size}")
    req = LoadRequest(normalize_split(split), tuple(search_roots(root)), root, image_size, cache, download, strict)
    text = os.fspath(source).strip()
    if not text:
        raise DataError("data.name is empty: give a dataset name or a path")
    name = ALIASES.get(text.lower(), text.lower())
    if name in DATASETS and not _looks_like_path(text):
        ds = DATASETS[name](req)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown dataset {text!r}: not a known name ({', '.join(DATASETS)}) "
                f"and no file or folder at {path.absolute()}"
            )
        ds = load_path(path.absolute(), req)
    if image_size is not None and tuple(ds.images.shape[2:]) != (image_size, image_size):
        ds = ImageSet(resize_images(ds.images, image_size), ds.labels, ds.classes, ds.name)
    return ds


def load_path(path: Path, req: LoadRequest) -> ImageSet:
    """Read a dataset given by its location, recognising the official layouts by their files."""
    lower = path.name.lower()
    if path.is_dir():
        if (path / cifar.CIFAR10.meta).is_file():
            return _official(cifar.read_cifar, path, cifar.CIFAR10, req)
        if (path / cifar.CIFAR100.meta).is_file() and (path / "train").is_file():
            return _official(cifar.read_cifar, path, cifar.CIFAR100, req)
        if any((path / x).is_file() for x, _ in stl10.SPLITS.values()):
            req.check_split("stl10", tuple(stl10.SPLITS))
            return stl10.read_folder(path, req.split)
        if req.split in idx.PREFIX:
            found = idx.find_idx(path, f"{idx.PREFIX[req.split]}-images-idx3-ubyte")
            if found is not None:
                return idx.read_idx_images(found)
        return load_image_folder(path, req.split, req.image_size, req.strict, req.cache)
    if lower.endswith(".npz"):
        return read_npz(path, req.split)
    if lower == cifar.CIFAR10.archive:
        return _official(cifar.read_cifar, path, cifar.CIFAR10, req)
    if lower == cifar.CIFAR100.archive:
        return _official(cifar.read_cifar, path, cifar.CIFAR100, req)
    if lower == stl10.ARCHIVE:
        req.check_split("stl10", tuple(stl10.SPLITS))
        return stl10.read_tar(path, req.split)
    if is_tar(path):
        return load_image_folder(path, req.split, req.image_size, req.strict, req.cache)
    if "idx" in lower or "ubyte" in lower:
        return idx.read_idx_images(path)
    raise DataError(
        f"cannot tell how to read {path}: expected a folder of images, a .tar/.tar.gz/.tgz of one, "
        f"an .npz, an idx images file (*-idx3-ubyte[.gz]) or an official CIFAR/STL-10 archive"
    )


def _official(reader, path: Path, layout, req: LoadRequest) -> ImageSet:
    req.check_split(layout.name, tuple(layout.splits))
    return reader(path, layout, req.split)
