"""STL-10 binaries (Coates, Lee & Ng 2011, https://cs.stanford.edu/~acoates/stl10/).

Each *_X.bin is raw uint8, 3 x 96 x 96 per image, every channel stored column-major (as
written by MATLAB); *_y.bin holds one byte per image, labels 1..10. unlabeled_X.bin is 100,000
images (2.7 GB), so an extracted copy is memory-mapped rather than read into a second buffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import download as dl
from .imageset import DataError, ImageSet
from .roots import LoadRequest
from .tarstream import read_tar as read_tar_members

FOLDER = "stl10_binary"
ARCHIVE = "stl10_binary.tar.gz"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
# class_names.txt of the official archive, used when that file is absent.
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_CHUNK = 1024
# Caps on the members held in memory: unlabeled_X.bin is 2.76 GB; a header may claim any size.
_MAX_X = 4 << 30
_MAX_OTHER = 16 << 20


def decode_images(raw: np.ndarray, where: str) -> np.ndarray:
    """Raw STL bytes (an array or memmap) -> contiguous uint8 [N, 3, 96, 96], row-major."""
    if raw.size == 0 or raw.size % IMAGE_BYTES:
        raise DataError(f"{where}: {raw.size} bytes is not a whole number of 3x96x96 images "
                        f"({IMAGE_BYTES} bytes each); truncated?")
    n = raw.size // IMAGE_BYTES
    src = raw.reshape(n, 3, SIDE, SIDE)
    out = np.empty((n, 3, SIDE, SIDE), dtype=np.uint8)
    # Chunked, so a memory-mapped source is paged in piece by piece.
    for s in range(0, n, _CHUNK):
        out[s : s + _CHUNK] = src[s : s + _CHUNK].transpose(0, 1, 3, 2)
    return out


def decode_labels(raw: np.ndarray, n: int, where: str, num_classes: int) -> np.ndarray:
    if raw.size != n:
        raise DataError(f"{where}: {raw.size} labels for {n} images")
    if n and (raw.min() < 1 or raw.max() > num_classes):
        raise DataError(f"{where}: labels must be 1..{num_classes}, found {raw.min()}..{raw.max()}")
    return raw.astype(np.int64) - 1


def _class_names(raw: bytes | None, where: str) -> list[str]:
    if raw is None:
        return list(CLASSES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    # STL-10 has 10 classes; another count would quietly change num_classes and the names.
    if len(names) != len(CLASSES):
        raise DataError(f"{where} names {len(names)} classes; STL-10 has {len(CLASSES)}, one name a line")
    return names


def read_folder(folder: Path, split: str) -> ImageSet:
    x_name, y_name = SPLITS[split]
    missing = [n for n in (x_name, y_name) if n and not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; re-extract {ARCHIVE}")
    x_path, names_file = folder / x_name, folder / "class_names.txt"
    try:
        raw = np.memmap(x_path, dtype=np.uint8, mode="r") if x_path.stat().st_size else np.empty(0, np.uint8)
        images = decode_images(raw, str(x_path))
        del raw
        if y_name is None:
            return ImageSet(images, None, None, "stl10")
        classes = _class_names(names_file.read_bytes() if names_file.is_file() else None, str(names_file))
        y_raw = np.fromfile(folder / y_name, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {e.filename}: {e.strerror or e}") from None
    labels = decode_labels(y_raw, len(images), str(folder / y_name), len(classes))
    return ImageSet(images, labels, classes, "stl10")


def read_tar(archive: Path, split: str) -> ImageSet:
    """One split from the archive, which is read to its end so that damage anywhere shows."""
    x_name, y_name = SPLITS[split]
    caps = {x_name: _MAX_X, "class_names.txt": _MAX_OTHER} | ({y_name: _MAX_OTHER} if y_name else {})
    contents = read_tar_members(archive, lambda name: caps.get(name.rsplit("/", 1)[-1], 0))
    if contents.too_big:
        raise DataError(f"{archive}: member {contents.too_big[0]} is larger than an STL-10 file may be")
    found: dict[str, tuple[str, bytes]] = {}
    for member in list(contents.data):  # popped, so that the 2.7 GB split is held once
        data, base = contents.data.pop(member), member.rsplit("/", 1)[-1]
        if base in found:
            raise DataError(f"{archive} holds {base} twice: {found[base][0]} and {archive}:{member}")
        found[base] = (f"{archive}:{member}", data)
    missing = [n for n in (x_name, y_name) if n and n not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(f'{FOLDER}/{n}' for n in missing)}")
    where, data = found.pop(x_name)
    images = decode_images(np.frombuffer(data, np.uint8), where)
    del data
    if y_name is None:
        return ImageSet(images, None, None, "stl10")
    names_where, names_raw = found.get("class_names.txt", (None, None))
    classes = _class_names(names_raw, names_where)
    where, data = found[y_name]
    labels = decode_labels(np.frombuffer(data, np.uint8), len(images), where, len(classes))
    return ImageSet(images, labels, classes, "stl10")


def load_stl10(req: LoadRequest) -> ImageSet:
    req.check_split("stl10", tuple(SPLITS))
    looked = []
    for root in req.roots:
        looked += [root / FOLDER, root / ARCHIVE]
        if (root / FOLDER).is_dir():
            return read_folder(root / FOLDER, req.split)
        if (root / ARCHIVE).is_file():
            return read_tar(root / ARCHIVE, req.split)
    if req.download:
        (archive,) = dl.download("stl10", req.download_root)
        # Extracted once, so that the 2.7 GB unlabeled split can be memory-mapped.
        wanted = {n for pair in SPLITS.values() for n in pair if n} | {"class_names.txt"}
        dl.extract_members(archive, req.download_root / FOLDER, wanted)
        return read_folder(req.download_root / FOLDER, req.split)
    raise req.not_found("stl10", looked, dl.HOMEPAGES["stl10"])
