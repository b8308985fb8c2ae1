"""On-disk cache of decoded image sets, so slow sources (image folders, tars) decode once.

Entries live under $SELFSUP_CACHE/decoded (default ~/.cache/selfsup/decoded), never next to the
source, which may be read-only. An entry is an uncompressed .npz read back with allow_pickle=False,
so a cache file cannot run code. Captions (ImageSet.texts) are stored as their UTF-8 bytes with
offsets, and the warnings given while reading the source are kept to be given again on a hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .imageset import DataError, DataWarning, ImageSet
from .roots import cache_root

# Bump when decoding changes (mode handling, resizing, orientation), so stale entries are ignored.
# 3: folders and tars holding a captions file are read by captions.py, with texts.
CACHE_VERSION = 3


class Cached(NamedTuple):
    ds: ImageSet
    skipped: list[str]  # files skipped as undecodable when the entry was made
    notes: list[str]  # other warnings given then (captions.py), to be given again


def fingerprint(path: Path, files: Iterable[tuple[str, os.stat_result | None]] = ()) -> dict:
    """Identity of a source: absolute path, size and mtime. A folder is identified by `files`,
    the (name, stat) of every file its reader reads (stat None: unreadable), not by a walk of its
    own: the reader follows directory links and a plain walk would not, so edits behind a link
    would go unnoticed; and a folder's own mtime misses edits inside subfolders."""
    path = path.absolute()
    if not path.is_dir():
        st = path.stat()
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = 0
    for name, st in files:
        size, mtime = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
        h.update(f"{name}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return {"path": str(path), "files": count, "listing": h.hexdigest()}


def cache_file(source: Path, split: str, image_size: int | None,
               files: Iterable[tuple[str, os.stat_result | None]] = (), kind: str = "") -> Path:
    """The entry of one split of `source` decoded at `image_size`; `kind` tells apart readers
    that read one source differently ("captions")."""
    key = {"v": CACHE_VERSION, "source": fingerprint(source, files), "split": split, "image_size": image_size}
    if kind:
        key["kind"] = kind
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = (source.name.split(".")[0] or "data") + (f"-{kind}" if kind else "")
    size = f"-{image_size}px" if image_size else ""
    return cache_root() / "decoded" / f"{stem}-{split}{size}-{digest}.npz"


def _texts_from(data: np.ndarray, ends: np.ndarray, counts: np.ndarray) -> list[list[str]]:
    blob = data.tobytes()
    bad_counts = len(counts) > 0 and (counts.min() < 1 or int(counts.sum()) != len(ends))
    bad_ends = len(ends) > 0 and (ends[0] < 0 or ends[-1] != len(blob) or (np.diff(ends) < 0).any())
    if bad_counts or bad_ends:
        raise ValueError("the captions' offsets do not fit their bytes")
    starts = np.concatenate([[0], ends[:-1]]).tolist()
    flat = [blob[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist())]
    cuts = np.cumsum(counts).tolist()
    return [flat[a:b] for a, b in zip([0, *cuts[:-1]], cuts)]


def load(path: Path, name: str) -> Cached | None:
    """The cached set at `path`, with the files skipped and the warnings given when it was
    made, or None when there is no readable entry."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images = torch.from_numpy(z["images"])
            labels = torch.from_numpy(z["labels"]) if "labels" in z.files else None
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
            skipped = [str(s) for s in z["skipped"]] if "skipped" in z.files else []
            notes = [str(s) for s in z["notes"]] if "notes" in z.files else []
            texts = (_texts_from(z["text_bytes"], z["text_ends"], z["text_counts"])
                     if "text_counts" in z.files else None)
        return Cached(ImageSet(images, labels, classes, name, texts), skipped, notes)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError) as e:
        warnings.warn(f"ignoring unreadable cache entry {path}: {e}", DataWarning, stacklevel=3)
        return None


def save(path: Path, ds: ImageSet, skipped: list[str] = (), notes: list[str] = ()) -> None:
    """Write `ds` (with the names of files skipped while decoding it and the other warnings
    given then) to `path` atomically (temporary file + os.replace), so a reader never sees a
    half-written entry and concurrent writers (DDP ranks) cannot corrupt one another."""
    arrays = {"images": ds.images.cpu().numpy()}
    if ds.labels is not None:
        arrays["labels"] = ds.labels.cpu().numpy()
    if ds.classes is not None:
        arrays["classes"] = np.array(ds.classes, dtype=str)
    if skipped:
        arrays["skipped"] = np.array(skipped, dtype=str)
    if notes:
        arrays["notes"] = np.array(notes, dtype=str)
    if ds.texts is not None:
        # Bytes and offsets rather than a str array, whose every cell is as wide as the longest.
        encoded = [c.encode("utf-8") for t in ds.texts for c in t]
        arrays["text_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        arrays["text_ends"] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        arrays["text_counts"] = np.array([len(t) for t in ds.texts], dtype=np.int64)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        # A cache that cannot be written only costs time on the next load.
        warnings.warn(f"could not write the data cache {path}: {e}", DataWarning, stacklevel=3)
    finally:
        tmp.unlink(missing_ok=True)
