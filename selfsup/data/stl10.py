"""STL-10 binaries (Coates, Lee & Ng 2011, https://cs.stanford.edu/~acoates/stl10/).

Each *_X.bin is raw uint8, 3 x 96 x 96 per image, every channel stored column-major (as
written by MATLAB); *_y.bin holds one byte per image, labels 1..10. unlabeled_X.bin is 100,000
images (2.7 GB), so an extracted copy is memory-mapped rather than read into a second buffer.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from . import download as dl
from .imageset import DataError, ImageSet
from .roots import LoadRequest

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


def _class_names(text: str | None) -> list[str]:
    names = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return names or list(CLASSES)


def read_folder(folder: Path, split: str) -> ImageSet:
    x_name, y_name = SPLITS[split]
    missing = [n for n in (x_name, y_name) if n and not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; re-extract {ARCHIVE}")
    x_path = folder / x_name
    raw = np.memmap(x_path, dtype=np.uint8, mode="r") if x_path.stat().st_size else np.empty(0, np.uint8)
    images = decode_images(raw, str(x_path))
    del raw
    names_file = folder / "class_names.txt"
    classes = _class_names(names_file.read_text() if names_file.is_file() else None)
    if y_name is None:
        return ImageSet(images, None, None, "stl10")
    y_path = folder / y_name
    labels = decode_labels(np.fromfile(y_path, dtype=np.uint8), len(images), str(y_path), len(classes))
    return ImageSet(images, labels, classes, "stl10")


def read_tar(archive: Path, split: str) -> ImageSet:
    x_name, y_name = SPLITS[split]
    wanted = {x_name, "class_names.txt"} | ({y_name} if y_name else set())
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    found[base] = tf.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot read the archive {archive}: {e} (truncated download?)") from e
    missing = [n for n in (x_name, y_name) if n and n not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(f'{FOLDER}/{n}' for n in missing)}")
    images = decode_images(np.frombuffer(found.pop(x_name), np.uint8), f"{archive}:{x_name}")
    classes = _class_names(found["class_names.txt"].decode() if "class_names.txt" in found else None)
    if y_name is None:
        return ImageSet(images, None, None, "stl10")
    labels = decode_labels(np.frombuffer(found[y_name], np.uint8), len(images), f"{archive}:{y_name}", len(classes))
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
