"""Image folders and tars of them.

Layouts, looked for in this order below any single wrapper folder:
    split/class/file   split subfolders (train, test, val, unlabeled, ...): `split` picks one
    class/file         labelled; classes are the sorted subfolder names
    file               flat, unlabelled
Tars are streamed with tarfile and never extracted to disk. Non-image files (by extension) and
hidden files are skipped silently; images that fail to decode are skipped with one warning
(strict=True raises instead).
"""

from __future__ import annotations

import os
import tarfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cache
from .decode import FORMATS, decode, image_format, stack
from .imageset import DataError, DataWarning, ImageSet

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "test": ("test", "testing"),
    "val": ("val", "valid", "validation"),
    "unlabeled": ("unlabeled", "unlabelled"),
    "extra": ("extra",),
}
SPLIT_DIRS = {alias for names in SPLIT_ALIASES.values() for alias in names}
# Splits that mean "the whole set" for a folder without split subfolders. Any other split is
# refused there, so that e.g. a test split can never silently be the training images.
WHOLE_SPLITS = ("train", "all", "unlabeled")
_WARN_FIRST = 5
_CHUNK = 256


@dataclass
class _Entry:
    parts: tuple[str, ...]  # path inside the folder or tar, split into components
    data: bytes | str  # file bytes (tar members) or a file path (folders)
    fmt: str
    origin: str  # where the file is, for messages: its path, or "<tar>:<member name>"


def is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def source_name(path: Path) -> str:
    name = path.name
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _visible(parts: tuple[str, ...]) -> bool:
    # Dot files include macOS "._x.jpg" resource forks, which have image extensions.
    return all(p and not p.startswith(".") and p != "__MACOSX" for p in parts)


def _list_folder(path: Path) -> list[_Entry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible((d,)))
        rel_dir = Path(dirpath).relative_to(path).parts
        for name in filenames:
            fmt = image_format(name)
            if fmt and _visible((name,)):
                full = os.path.join(dirpath, name)
                entries.append(_Entry(rel_dir + (name,), full, fmt, full))
    return entries


def _list_tar(path: Path) -> list[_Entry]:
    """Stream the tar once, keeping the bytes of every image member (compressed images are
    small next to the decoded set)."""
    entries = []
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                fmt = image_format(parts[-1]) if parts else None
                if fmt and _visible(parts):
                    entries.append(_Entry(parts, tf.extractfile(member).read(), fmt, f"{path}:{member.name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot read the tar {path}: {e} (truncated or not a tar archive?)") from e
    return entries


def _strip_wrappers(entries: list[_Entry]) -> list[_Entry]:
    """Drop folders that wrap everything, as in a tar made with `tar czf x.tgz mydata/`.
    (So a folder with a single class folder reads as unlabelled, which is all it can be.)"""
    while entries and all(len(e.parts) > 1 for e in entries):
        tops = {e.parts[0] for e in entries}
        if len(tops) != 1 or next(iter(tops)).lower() in SPLIT_DIRS:
            break
        for e in entries:
            e.parts = e.parts[1:]
    return entries


def _classes(entries: list[_Entry]) -> list[str]:
    return sorted({e.parts[0] for e in entries if len(e.parts) > 1})


def _select(entries: list[_Entry], split: str, source: Path) -> tuple[list[_Entry], list[str] | None, int]:
    """The entries of `split`, the class names (None when unlabelled) and how many loose files
    were ignored beside class folders."""
    entries = _strip_wrappers(entries)
    tops = {e.parts[0] for e in entries if len(e.parts) > 1}
    split_dirs = {t for t in tops if t.lower() in SPLIT_DIRS}
    if split_dirs:
        wanted = SPLIT_ALIASES.get(split, (split,))
        chosen = [t for t in sorted(split_dirs) if t.lower() in wanted]
        if not chosen:
            raise DataError(
                f"{source} has split folders {sorted(split_dirs)} but none for split {split!r}"
            )
        # Classes come from every split, so that one class name has one label in all splits.
        classes = sorted({e.parts[1] for e in entries if e.parts[0] in split_dirs and len(e.parts) > 2})
        entries = [e for e in entries if e.parts[0] == chosen[0]]
        for e in entries:
            e.parts = e.parts[1:]
    else:
        if split not in WHOLE_SPLITS:
            raise DataError(
                f"{source} has no split folders (looked for {', '.join(sorted(SPLIT_DIRS))}), so it "
                f"holds one set; load it with split='train' rather than {split!r}"
            )
        classes = _classes(entries)
    if not any(len(e.parts) > 1 for e in entries):
        return sorted(entries, key=lambda e: e.parts), None, 0
    labelled = [e for e in entries if len(e.parts) > 1]
    return sorted(labelled, key=lambda e: e.parts), classes, len(entries) - len(labelled)


def _decode_chunk(chunk: list[_Entry], image_size: int | None) -> list[np.ndarray | Exception]:
    out: list[np.ndarray | Exception] = []
    for e in chunk:
        try:
            out.append(decode(e.data, e.fmt, image_size))
        except Exception as err:  # any decoder failure means "this file is unreadable"
            out.append(err)
    return out


def _decode_all(entries: list[_Entry], image_size: int | None) -> list[np.ndarray | Exception]:
    """Decode in a thread pool: PIL releases the GIL while decoding, and threads need no
    pickling of bytes or arrays between processes. More threads than cores measured faster
    (the GIL-holding header parsing of one image overlaps the decoding of others)."""
    chunks = [entries[i : i + _CHUNK] for i in range(0, len(entries), _CHUNK)]
    workers = min(16, 2 * (os.cpu_count() or 1), len(chunks))
    if workers <= 1:
        return [r for c in chunks for r in _decode_chunk(c, image_size)]
    with ThreadPoolExecutor(workers) as pool:
        return [r for rs in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)) for r in rs]


def read_image_folder(
    path: Path, split: str = "train", image_size: int | None = None, strict: bool = False,
    name: str | None = None,
) -> tuple[ImageSet, list[str]]:
    """Decode an image folder or tar into an ImageSet; also returns the skipped files' names."""
    path = Path(path)
    entries = _list_tar(path) if is_tar(path) else _list_folder(path)
    kind = "tar" if is_tar(path) else "folder"
    if not entries:
        raise DataError(f"no images in the {kind} {path} (extensions read: {' '.join(FORMATS)})")
    entries, classes, loose = _select(entries, split, path)
    if loose:
        warnings.warn(f"{path}: ignored {loose} image(s) lying beside the class folders", DataWarning, stacklevel=3)
    if not entries:
        raise DataError(f"no images for split {split!r} in the {kind} {path}")

    results = _decode_all(entries, image_size)
    good = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    if bad and strict:
        raise DataError(f"cannot decode image {entries[bad[0]].origin}: {results[bad[0]]}")
    skipped = [entries[i].origin for i in bad]
    if not good:
        raise DataError(f"none of the {len(entries)} images in {path} ({split}) could be decoded, e.g. "
                        f"{skipped[0]}: {results[bad[0]]}")

    first = results[good[0]].shape[:2]
    for i in good:
        if results[i].shape[:2] != first:
            raise DataError(
                f"images in {path} differ in size: {entries[good[0]].origin} is {first[1]}x{first[0]}, "
                f"{entries[i].origin} is {results[i].shape[1]}x{results[i].shape[0]} (WxH); "
                f"pass image_size=... to resize them (shorter side, then centre crop)"
            )
    images = stack([results[i] for i in good])
    labels = None
    if classes is not None:
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[entries[i].parts[0]] for i in good], dtype=np.int64)
    return ImageSet(images, labels, classes, name or source_name(path)), skipped


def warn_skipped(path: Path, skipped: list[str], total: int) -> None:
    if skipped:
        shown = ", ".join(skipped[:_WARN_FIRST]) + (", ..." if len(skipped) > _WARN_FIRST else "")
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) of {total} in {path}: {shown} "
            f"(strict=True raises instead)",
            DataWarning,
            stacklevel=4,
        )


def load_image_folder(
    path: Path, split: str = "train", image_size: int | None = None, strict: bool = False,
    cache_ok: bool = True, name: str | None = None,
) -> ImageSet:
    """read_image_folder behind the decoded-array cache (see cache.py)."""
    path = Path(path).absolute()
    name = name or source_name(path)
    entry = cache.cache_file(path, split, image_size) if cache_ok else None
    if entry is not None:
        hit = cache.load(entry, name)
        # An entry made while skipping bad files must not satisfy a strict load.
        if hit is not None and not (strict and hit[1]):
            ds, skipped = hit
            warn_skipped(path, skipped, len(ds) + len(skipped))
            return ds
    ds, skipped = read_image_folder(path, split, image_size, strict, name)
    warn_skipped(path, skipped, len(ds) + len(skipped))
    if entry is not None:
        cache.save(entry, ds, skipped)
    return ds
