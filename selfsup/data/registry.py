"""Dataset names, and load_dataset: a name or a path in, an ImageSet out."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from pathlib import Path

from . import captions, cifar, idx, stl10
from .cache import cache_file
from .decode import resize_images
from .digits import load_digits
from .folder import is_tar, load_image_folder
from .imageset import DataError, ImageSet
from .npz import read_npz
from .roots import LoadRequest, root_note, search_roots

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


# Known by name, found as a folder or tar in the data roots and read like any path: the
# project's 1,000-photo Flickr8k subset with its captions (image-text methods).
IN_ROOTS = {"flickr8k-1k": ("flickr8k-1k", "flickr8k-1k.tar.gz")}


def known_datasets() -> list[str]:
    return [*DATASETS, *IN_ROOTS]


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
    holdout: float = 0.1,
    seed: int = 0,
) -> ImageSet:
    """Load one split of a dataset as an ImageSet (uint8 [N, C, H, W] on the CPU).

    source: a dataset name (see known_datasets()) or a path to an image folder, a .tar/.tar.gz/
        .tgz of one, an .npz, an idx images file, or an extracted official folder. A folder or
        tar holding a captions file is image-caption data, read with texts (captions.py).
    split: train | test | unlabeled (STL-10) | val ...; "unlabelled" is accepted too; "all" for
        every image of image-caption data without split folders.
    root: folder holding named datasets (default $SELFSUP_DATA, then ~/.cache/selfsup/data).
    image_size: make every image image_size x image_size (shorter side resized, centre crop).
    cache: reuse decoded arrays of image folders and tars from $SELFSUP_CACHE.
    download: fetch a missing official dataset into the data root, checking its md5.
    strict: raise on the first undecodable image instead of skipping it with a warning.
    holdout: image-caption data without split folders: the fraction of its images (not caption
        rows) in the test split; train is the rest.
    seed: draws that split.
    """
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
            raise DataError(f"data.image_size must be a whole number of pixels, got {image_size!r}")
        image_size = int(image_size)
        if image_size <= 0:
            raise DataError(f"data.image_size must be a positive number of pixels, got {image_size}")
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real) or not 0 < holdout < 1:
        raise DataError(f"data.holdout must be a fraction between 0 and 1, got {holdout!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise DataError(f"the seed of the holdout split must be a whole number, got {seed!r}")
    req = LoadRequest(normalize_split(split), tuple(search_roots(root)), root, image_size, cache, download, strict)
    text = os.fspath(source).strip()
    if not text:
        raise DataError("data.name is empty: give a dataset name or a path")
    name = ALIASES.get(text.lower(), text.lower())
    if name in DATASETS and not _looks_like_path(text):
        ds = DATASETS[name](req)
    elif name in IN_ROOTS and not _looks_like_path(text):
        looked = [r / n for r in req.roots for n in IN_ROOTS[name]]
        found = next((p for p in looked if p.exists()), None)
        if found is None:
            raise DataError(f"{name} not found; looked for {', '.join(map(str, looked))}. "
                            f"{root_note(root)}. It is not downloaded: place it in the data root")
        ds = load_path(found, req, float(holdout), int(seed))
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown dataset {text!r}: not a known name ({', '.join(DATASETS)}) "
                f"and no file or folder at {path.absolute()}"
            )
        ds = load_path(path.absolute(), req, float(holdout), int(seed))
    if image_size is not None and tuple(ds.images.shape[2:]) != (image_size, image_size):
        ds = ImageSet(resize_images(ds.images, image_size), ds.labels, ds.classes, ds.name, ds.texts)
    return ds


def official_layout(path: Path) -> bool:
    """Whether `load_path` reads `path` by an official layout (CIFAR, STL-10, idx, npz) rather
    than as a folder or tar of image files."""
    lower = path.name.lower()
    if path.is_dir():
        return ((path / cifar.CIFAR10.meta).is_file() or (path / cifar.CIFAR100.meta).is_file()
                or any((path / x).is_file() for x, _ in stl10.SPLITS.values())
                or any(idx.find_idx(path, f"{p}-images-idx3-ubyte") for p in idx.PREFIX.values()))
    return not is_tar(path) or lower in (cifar.CIFAR10.archive, cifar.CIFAR100.archive, stl10.ARCHIVE)


def load_path(path: Path, req: LoadRequest, holdout: float = 0.1, seed: int = 0) -> ImageSet:
    """Read a dataset given by its location, recognising the official layouts by their files.
    holdout, seed: as in load_dataset."""
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
        return _images_or_captions(path, req, holdout, seed)
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
        return _images_or_captions(path, req, holdout, seed)
    if "idx" in lower or "ubyte" in lower:
        return idx.read_idx_images(path)
    raise DataError(
        f"cannot tell how to read {path}: expected a folder of images, a .tar/.tar.gz/.tgz of one, "
        f"an .npz, an idx images file (*-idx3-ubyte[.gz]) or an official CIFAR/STL-10 archive"
    )


def _images_or_captions(path: Path, req: LoadRequest, holdout: float, seed: int) -> ImageSet:
    """A folder or tar: image-caption data when it holds a captions file, else an image folder.
    Which it is shows in its listing, so a tar is read once: a decoded entry of either kind in
    the cache (keyed by the tar's size and mtime) answers without reading it, and otherwise the
    one listing, captions files kept, goes to the reader it calls for."""
    if is_tar(path) and req.cache:
        ds = captions.from_cache(path, req.split, req.image_size, req.strict, holdout, seed)
        if ds is not None:
            return ds
        if cache_file(path, req.split, req.image_size).exists():
            return load_image_folder(path, req.split, req.image_size, req.strict, req.cache)
    listing = captions.list_captioned(path)
    if listing.extra:
        return captions.load_captions(path, req.split, req.image_size, req.strict, req.cache, holdout, seed, listing)
    return load_image_folder(path, req.split, req.image_size, req.strict, req.cache, listing=listing)


def _official(reader, path: Path, layout, req: LoadRequest) -> ImageSet:
    req.check_split(layout.name, tuple(layout.splits))
    return reader(path, layout, req.split)
