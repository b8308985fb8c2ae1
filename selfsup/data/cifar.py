"""CIFAR-10 and CIFAR-100 in the official "python version" (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html), plus CIFAR-10 as an image-folder tree of JPEGs.

The official files are Python pickles of dicts with bytes keys: b'data' is uint8 [N, 3072]
(1024 red, then green, then blue values, each row-major), labels are lists of ints.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import download as dl
from .folder import load_image_folder
from .imageset import DataError, ImageSet
from .roots import LoadRequest
from .tarstream import read_tar

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
# The largest official member is CIFAR-100's train (50,000 images, ~155 MB); a header may claim any size.
_MAX_MEMBER = 1 << 30


def _latin1(text: str, encoding: str) -> bytes:
    # Only what Python 3 pickles bytes as; any other codec is no part of a dataset pickle.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing to encode with {encoding!r} in a dataset pickle")
    return codecs.encode(text, encoding)


def _empty_bytes(*args) -> bytes:
    # How protocol 2 writes b"" (an empty array's buffer); bytes(n) would allocate n bytes.
    if args:
        raise pickle.UnpicklingError("refusing to call bytes() with arguments in a dataset pickle")
    return b""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a pickle can otherwise run any code,
    and a dataset file is not trusted code."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return _latin1
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):
            return _empty_bytes
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
    data = _array(_key(d, "data", where), where, "data")
    labels = _array(_key(d, layout.label_key, where), where, layout.label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: 'data' should be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if not len(data):
        raise DataError(f"{where}: 'data' holds no images")
    # Checked before any cast: int64 would turn 0.7 into 0 and "7" into 7 without a word.
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: {layout.label_key!r} should be a list of integers, got "
                        f"{labels.dtype} {list(labels.shape)}")
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _array(value, where: str, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:  # e.g. rows of different lengths
        raise DataError(f"{where}: {key!r} is not an array: {e}") from None


def _class_names(meta: dict, layout: _Layout, where: str) -> list[str]:
    names = _key(meta, layout.names_key, where)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{where}: {layout.names_key!r} should be a non-empty list of names, "
                        f"got {type(names).__name__}")
    out = []
    for c in names:
        if isinstance(c, bytes):
            try:
                c = c.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: class name {c!r} in {layout.names_key!r} is not UTF-8") from None
        if not isinstance(c, str):
            raise DataError(f"{where}: {layout.names_key!r} should hold names, found {type(c).__name__} {c!r}")
        out.append(c)
    return out


def _read_files(source: Path, layout: _Layout, names: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    """name -> (where it was read, for messages; its bytes), from the extracted folder or the tar.
    The whole tar is read, so that damage after the wanted members shows too."""
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}; re-extract {layout.archive}")
        try:
            return {n: (str(source / n), (source / n).read_bytes()) for n in names}
        except OSError as e:
            raise DataError(f"cannot read {e.filename}: {e.strerror or e}") from None

    def wanted(name: str) -> bool:
        parts = name.split("/")
        return parts[-1] in names and len(parts) >= 2 and parts[-2] == layout.folder

    contents = read_tar(source, lambda name: _MAX_MEMBER if wanted(name) else 0)
    if contents.too_big:
        raise DataError(f"{source}: member {contents.too_big[0]} is larger than the "
                        f"{_MAX_MEMBER >> 20} MiB a CIFAR file may be")
    found: dict[str, tuple[str, bytes]] = {}
    for member, data in contents.data.items():
        base = member.rsplit("/", 1)[-1]
        if base in found:
            raise DataError(f"{source} holds {base} twice: {found[base][0]} and {source}:{member}")
        found[base] = (f"{source}:{member}", data)
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{source} lacks {', '.join(f'{layout.folder}/{n}' for n in missing)}")
    return found


def read_cifar(source: Path, layout: _Layout, split: str) -> ImageSet:
    """Read one split from an extracted folder (cifar-10-batches-py/) or the .tar.gz."""
    names = layout.splits[split]
    raw = _read_files(source, layout, names + (layout.meta,))
    where, data = raw[layout.meta]
    classes = _class_names(_unpickle(data, where), layout, where)
    images, labels = [], []
    for n in names:
        where, data = raw[n]
        x, y = _batch(_unpickle(data, where), layout, where)
        if y.min() < 0 or y.max() >= len(classes):
            raise DataError(f"{where}: labels must be 0..{len(classes) - 1} (the {len(classes)} classes of "
                            f"{layout.meta}), found {y.min()}..{y.max()}")
        images.append(x)
        labels.append(y)
    return ImageSet(np.concatenate(images), np.concatenate(labels), classes, layout.name)


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
