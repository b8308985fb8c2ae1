"""CIFAR-10 and CIFAR-100 in the official "python version" (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html), plus CIFAR-10 as an image-folder tree of JPEGs.

The official files are Python pickles of dicts with bytes keys: b'data' is uint8 [N, 3072]
(1024 red, then green, then blue values, each row-major), labels are lists of ints.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import download as dl
from .folder import load_image_folder
from .imageset import DataError, ImageSet
from .roots import LoadRequest

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray


@dataclass(frozen=True)
class _Layout:
    name: str
    folder: str  # extracted archive folder
    archive: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str


CIFAR10 = _Layout(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta", "labels", "label_names",
)
CIFAR100 = _Layout(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
    {"train": ("train",), "test": ("test",)},
    "meta", "fine_labels", "fine_label_names",
)
# The JPEG re-encoding of CIFAR-10 as an image-folder tree (train/<class>/NNNN.jpg, test/...).
JPG_NAMES = ("cifar10-jpg", "cifar10-jpg.tar.gz")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a pickle can otherwise run any code,
    and a dataset file is not trusted code."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... all mean a bad file
        raise DataError(f"cannot read the CIFAR pickle {where}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles give bytes keys; accept str keys too (re-pickled copies).
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _key(d: dict, key: str, where: str):
    if key not in d:
        raise DataError(f"{where}: missing key {key!r} (keys: {', '.join(map(str, d))})")
    return d[key]


def _batch(d: dict, layout: _Layout, where: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(_key(d, "data", where))
    labels = np.asarray(_key(d, layout.label_key, where), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: 'data' should be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),):
        raise DataError(f"{where}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _read_files(source: Path, layout: _Layout, names: tuple[str, ...]) -> dict[str, bytes]:
    """The raw bytes of the wanted files, from the extracted folder or by streaming the tar."""
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}; re-extract {layout.archive}")
        return {n: (source / n).read_bytes() for n in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r|*") as tf:
            for member in tf:
                parts = member.name.split("/")
                if member.isfile() and parts[-1] in names and len(parts) >= 2 and parts[-2] == layout.folder:
                    found[parts[-1]] = tf.extractfile(member).read()
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot read the archive {source}: {e} (truncated download?)") from e
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{source} lacks {', '.join(f'{layout.folder}/{n}' for n in missing)}")
    return found


def read_cifar(source: Path, layout: _Layout, split: str) -> ImageSet:
    """Read one split from an extracted folder (cifar-10-batches-py/) or the .tar.gz."""
    names = layout.splits[split]
    raw = _read_files(source, layout, names + (layout.meta,))
    parts = [_batch(_unpickle(raw[n], f"{source}/{n}"), layout, f"{source}/{n}") for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta = _unpickle(raw[layout.meta], f"{source}/{layout.meta}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _key(meta, layout.names_key, layout.meta)]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{source}: labels outside 0..{len(classes) - 1}")
    return ImageSet(images, labels, classes, layout.name)


def _load(layout: _Layout, req: LoadRequest, jpg: bool) -> ImageSet:
    req.check_split(layout.name, tuple(layout.splits))
    looked = []
    for root in req.roots:
        for candidate in (root / layout.folder, root / layout.archive):
            looked.append(candidate)
            if candidate.exists():
                return read_cifar(candidate, layout, req.split)
        if jpg:
            for candidate in (root / n for n in JPG_NAMES):
                looked.append(candidate)
                if candidate.exists():
                    return load_image_folder(candidate, req.split, req.image_size, req.strict, req.cache, layout.name)
    if req.download:
        (archive,) = dl.download(layout.name, req.download_root)
        return read_cifar(archive, layout, req.split)
    raise req.not_found(layout.name, looked, dl.HOMEPAGES[layout.name])


def load_cifar10(req: LoadRequest) -> ImageSet:
    return _load(CIFAR10, req, jpg=True)


def load_cifar100(req: LoadRequest) -> ImageSet:
    return _load(CIFAR100, req, jpg=False)
