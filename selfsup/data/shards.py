"""WebDataset-style tar shards: written from any source selfsup reads, read back one image at a time.

A shards folder, as `selfsup shards SRC OUT` writes it:

    manifest.json          per split: its shards (file, images, bytes, sha256), the index file,
                           classes and images per class, channels, image size, mean and std,
                           how many source images were skipped as unreadable
    train-000000.tar ...   plain tars; per image `<key>.<ext>` (the encoded image) and, when the
                           split is labelled, `<key>.cls` (the label, decimal text). The key is
                           the image's number in the split, 9 digits. Any WebDataset reader
                           reads them (`webdataset.WebDataset("train-{000000..000009}.tar")`).
    train-index.npz        per image: its shard, the byte offset and length of its image data,
                           its format and its label (-1: none)

The index is why selfsup reads its shards itself rather than through the `webdataset` package:
with it any image is one seek away, so a stream can start at any step of an epoch, and the
stream's order can be a pure function of (manifest, seed, epoch, rank, worker) that a checkpoint
needs only the step to recover (selfsup/data/stream.py). webdataset's pipelines keep their
position inside iterators, which cannot be saved.

Images from image folders and tars of them are copied into the shards as their files are
(checked by decoding them, and counted in the statistics); images of the array formats (CIFAR,
idx, STL-10, npz) are encoded as PNG, which is lossless, unless `image_format` says otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decode import decode
from .imageset import DataError, DataWarning, ImageSet

MANIFEST = "manifest.json"
FORMAT = "selfsup-shards"
VERSION = 1
KEY_DIGITS = 9
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif", "PPM": "ppm"}
_PARTIAL = ".partial-"
_HASH_READ = 8 << 20


def shard_file(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def is_shards(path: str | os.PathLike) -> bool:
    """Whether `path` is a shards folder (it holds a manifest of ours)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / MANIFEST).is_file()


# -- writing ---------------------------------------------------------------------------------

@dataclass
class Encoded:
    """One image ready for a shard: its file bytes, PIL format, pixels (for the statistics) and label."""

    data: bytes
    fmt: str
    pixels: np.ndarray  # uint8 [H, W] or [H, W, 3]
    label: int  # -1: unlabelled


def encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


class _Stats:
    """Per-channel sums over every written pixel, exact in int64 (as `dataset_stats`)."""

    def __init__(self):
        self.sum = np.zeros(3, np.int64)
        self.sq = np.zeros(3, np.int64)
        self.pixels = 0
        self.colour = False
        self.sizes: set[tuple[int, int]] = set()

    def add(self, a: np.ndarray) -> None:
        c = a.reshape(a.shape[0] * a.shape[1], -1).astype(np.int64)  # [P, 1 or 3]
        self.sum += c.sum(0)
        self.sq += (c * c).sum(0)
        self.pixels += c.shape[0]
        self.colour |= a.ndim == 3
        self.sizes.add(a.shape[:2])

    def mean_std(self, channels: int) -> tuple[list[float], list[float]]:
        # Grey images count as equal R, G and B in a colour split, as the reader repeats them.
        s, q = (self.sum, self.sq) if channels == 3 else (self.sum[:1], self.sq[:1])
        mean = s / max(1, self.pixels)
        var = np.maximum(q / max(1, self.pixels) - mean * mean, 0)
        return (mean / 255).tolist(), (np.sqrt(var) / 255).tolist()


class ShardWriter:
    """Writes one split's images into tars of `per_shard` images under `out`, with its index.
    Files are written under a partial name and renamed when complete; `finish` gives the split's
    manifest entry."""

    def __init__(self, out: Path, split: str, per_shard: int):
        self.out, self.split, self.per_shard = out, split, per_shard
        self.shards: list[dict] = []
        self.rows: list[tuple[int, int, int, int, int]] = []  # shard, offset, length, format, label
        self.formats: list[str] = []
        self.stats = _Stats()
        self.class_counts: dict[int, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def _open(self) -> None:
        name = shard_file(self.split, len(self.shards))
        self._tar = tarfile.open(self.out / (_PARTIAL + name), "w", format=tarfile.GNU_FORMAT)
        self.shards.append({"file": name, "images": 0})
        self._in_shard = 0

    def _member(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        start = self._tar.offset
        self._tar.addfile(info, io.BytesIO(data))
        return start + tarfile.BLOCKSIZE  # names of 9 digits and an extension fit one header block

    def add(self, e: Encoded) -> None:
        if self._tar is None:
            self._open()
        key = f"{len(self.rows):0{KEY_DIGITS}d}"
        if e.fmt not in self.formats:
            self.formats.append(e.fmt)
        offset = self._member(f"{key}.{_EXT.get(e.fmt, e.fmt.lower())}", e.data)
        if e.label >= 0:
            self._member(f"{key}.cls", str(e.label).encode())
            self.class_counts[e.label] = self.class_counts.get(e.label, 0) + 1
        self.rows.append((len(self.shards) - 1, offset, len(e.data), self.formats.index(e.fmt), e.label))
        self.stats.add(e.pixels)
        self._in_shard += 1
        self.shards[-1]["images"] += 1
        if self._in_shard == self.per_shard:
            self._close()

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        entry = self.shards[-1]
        partial = self.out / (_PARTIAL + entry["file"])
        entry["bytes"], entry["sha256"] = partial.stat().st_size, file_sha256(partial)
        partial.replace(self.out / entry["file"])

    def finish(self, classes: list[str] | None, skipped: int) -> dict:
        self._close()
        if not self.rows:
            raise DataError(f"split {self.split!r}: no image could be written")
        rows = np.array(self.rows, dtype=np.int64)
        index = f"{self.split}-index.npz"
        with open(self.out / (_PARTIAL + index), "wb") as f:
            np.savez(f, shard=rows[:, 0].astype(np.int32), offset=rows[:, 1], length=rows[:, 2],
                     format=rows[:, 3].astype(np.int8), label=rows[:, 4])
        (self.out / (_PARTIAL + index)).replace(self.out / index)
        channels = 3 if self.stats.colour else 1
        mean, std = self.stats.mean_std(channels)
        sizes = sorted(self.stats.sizes)
        labelled = bool((rows[:, 4] >= 0).any())
        return {"images": len(self.rows), "shards": self.shards, "index": index,
                "index_sha256": file_sha256(self.out / index), "formats": self.formats,
                "channels": channels, "size": list(sizes[0]) if len(sizes) == 1 else None,
                "smallest": list(min(sizes, key=min)), "mean": mean, "std": std,
                "classes": classes if labelled else None,
                "class_counts": [self.class_counts.get(k, 0) for k in range(len(classes))]
                if labelled and classes else None, "skipped": skipped}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_READ):
            h.update(chunk)
    return h.hexdigest()


def _from_files(entries: list, classes: list[str] | None, image_size: int | None, fmt: str | None,
                quality: int, strict: bool, skipped: list[str]) -> Iterator[Encoded]:
    """The images of a folder or tar listing, their files kept as they are unless a size or
    format is asked for; decoded in threads (to check them and for the statistics)."""
    index = {c: k for k, c in enumerate(classes or [])}

    def one(e) -> Encoded | str:
        try:
            if e.error is not None:
                raise OSError(e.error)
            data = e.data if isinstance(e.data, bytes) else Path(e.data).read_bytes()
            pixels = decode(data, e.fmt, image_size)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "this file is unreadable"
            if strict:
                raise DataError(f"cannot decode image {e.origin}: {err}") from None
            return e.origin
        label = index[e.label] if e.label is not None else -1
        if image_size is None and (fmt is None or fmt == e.fmt):
            return Encoded(data, e.fmt, pixels, label)
        out = fmt or ("PNG" if e.fmt not in ("JPEG", "WEBP") else e.fmt)
        return Encoded(encode(pixels, out, quality), out, pixels, label)

    with ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as pool:
        for start in range(0, len(entries), 256):
            for r in pool.map(one, entries[start:start + 256]):
                if isinstance(r, str):
                    skipped.append(r)
                else:
                    yield r


def _from_imageset(ds: ImageSet, fmt: str | None, quality: int) -> Iterator[Encoded]:
    fmt = fmt or "PNG"
    labels = ds.labels.tolist() if ds.labels is not None else None
    for i in range(len(ds)):
        a = ds.images[i].permute(1, 2, 0).numpy()
        a = a[:, :, 0] if a.shape[2] == 1 else a
        yield Encoded(encode(a, fmt, quality), fmt, a, labels[i] if labels else -1)


def _source_images(source: str, split: str, root, image_size, fmt, quality, strict, skipped):
    """(images, classes) of one split of `source`: a folder or tar of images is read file by
    file (never all decoded in memory at once); any other source through `load_dataset`."""
    from . import captions, folder, registry

    path = Path(source).expanduser()
    if path.exists() and (path.is_dir() or folder.is_tar(path)) and not registry.official_layout(path):
        listing = captions.list_captioned(path.absolute())
        if listing.extra:
            warnings.warn(f"{path} holds captions; shards carry images and labels only, so the "
                          f"captions are not written", DataWarning, stacklevel=3)
        if not listing.images:
            raise DataError(f"no images in {path}")
        entries, classes, _ = folder.select_split(listing, registry.normalize_split(split), path)
        if not entries:
            raise DataError(f"no images for split {split!r} in {path}")
        return _from_files(entries, classes, image_size, fmt, quality, strict, skipped), classes
    ds = registry.load_dataset(source, split, root=root, image_size=image_size, strict=strict)
    return _from_imageset(ds, fmt, quality), ds.classes or (
        [str(k) for k in range(ds.num_classes)] if ds.labels is not None else None)


def write_shards(source: str, out: str | os.PathLike, splits=("train", "test"), per_shard: int = 1000,
                 image_size: int | None = None, image_format_name: str | None = None, quality: int = 90,
                 root=None, strict: bool = False, optional_splits=("test",),
                 progress: bool = True) -> dict:
    """Write the `splits` of `source` (a dataset name or path, as `load_dataset` takes) as shards
    of `per_shard` images into the folder `out` (new, or empty), and its manifest; returns the
    manifest. image_size: resize (shorter side, centre crop) and re-encode; image_format_name:
    png | jpg | webp to re-encode (default: files kept as they are, arrays as PNG); quality: for
    JPEG and WebP. A split in `optional_splits` the source does not have is left out, with a note."""
    from tqdm import tqdm

    out = Path(out).expanduser()
    if per_shard < 1:
        raise DataError(f"--shard-size must be at least 1 image, got {per_shard}")
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", None: None}.get(
        image_format_name and image_format_name.lower(), "?")
    if fmt == "?":
        raise DataError(f"--format {image_format_name!r}: expected png, jpg or webp")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.exists():
        kept = [p for p in out.iterdir() if not p.name.startswith(_PARTIAL)]
        if kept:
            raise DataError(f"{out} is not empty ({kept[0].name}, ...): shards are written into a new "
                            f"or empty folder, so that no one's files are replaced")
        for p in out.iterdir():  # what an interrupted writer left
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "source": str(source), "splits": {}}
    for split in splits:
        skipped: list[str] = []
        try:
            images, classes = _source_images(source, split, root, image_size, fmt, quality, strict, skipped)
        except DataError as e:
            if split in optional_splits and split != splits[0]:
                print(f"note: no split {split!r} written: {e}")
                continue
            raise
        writer = ShardWriter(out, split, per_shard)
        for e in tqdm(images, desc=f"shards {split}", unit="img", disable=not progress):
            writer.add(e)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s) of split {split!r} of {source}: "
                          f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}", DataWarning,
                          stacklevel=2)
        manifest["splits"][split] = writer.finish(classes, len(skipped))
    tmp = out / (_PARTIAL + MANIFEST)
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)
    return manifest


# -- reading ---------------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the shards manifest {path}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("splits"), dict):
        raise DataError(f"{path} is not a manifest of selfsup shards (format {FORMAT!r})")
    if m.get("version") != VERSION:
        raise DataError(f"{path} is version {m.get('version')!r} of the shards format; this selfsup "
                        f"reads version {VERSION}")
    return m


class ShardSplit:
    """One split of a shards folder: what its manifest says, its index, and its images one at a
    time (`read`). Opened files are kept per process, so worker processes open their own."""

    def __init__(self, folder: str | os.PathLike, split: str):
        self.folder = Path(folder).expanduser().absolute()
        m = read_manifest(self.folder)
        if split not in m["splits"]:
            raise DataError(f"{self.folder / MANIFEST} has no split {split!r} (it has "
                            f"{', '.join(m['splits']) or 'none'})")
        s = m["splits"][split]
        self.split, self.info = split, s
        try:
            self.files = [self.folder / e["file"] for e in s["shards"]]
            self.shard_bytes = [int(e["bytes"]) for e in s["shards"]]
            self.counts = [int(e["images"]) for e in s["shards"]]
            self.sha256 = [e["sha256"] for e in s["shards"]]
            self.channels, self.size = int(s["channels"]), s["size"]
            self.mean, self.std = list(s["mean"]), list(s["std"])
            self.classes, self.formats = s["classes"], list(s["formats"])
            index_path = self.folder / s["index"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.folder / MANIFEST}: split {split!r} lacks {e} or has it wrong") from None
        for f, size in zip(self.files, self.shard_bytes):
            have = f.stat().st_size if f.is_file() else None
            if have != size:
                raise DataError(f"shard {f} is damaged or missing: " + (
                    "no such file" if have is None else f"{have} bytes, the manifest says {size}"))
        try:
            with np.load(index_path, allow_pickle=False) as z:
                self.shard = z["shard"].astype(np.int64)
                self.offset, self.length = z["offset"], z["length"]
                self.format, labels = z["format"], z["label"]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read the shards index {index_path}: {e}") from None
        if len(self.shard) != sum(self.counts):
            raise DataError(f"{index_path} lists {len(self.shard)} images, the manifest "
                            f"{sum(self.counts)}: the folder mixes two writes")
        self.labels = torch.from_numpy(labels) if self.classes is not None else None
        self._open: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def name(self) -> str:
        return f"{self.folder.name}/{self.split}"

    def verify(self) -> None:
        """Every shard against its checksum; a DataError names the first that differs."""
        for f, want in zip(self.files, self.sha256):
            if file_sha256(f) != want:
                raise DataError(f"shard {f} is damaged: its sha256 differs from the manifest's")

    def _file(self, shard: int):
        if os.getpid() != self._pid:  # a forked worker: its own file handles
            self._open, self._pid = {}, os.getpid()
        f = self._open.get(shard)
        if f is None:
            f = self._open[shard] = open(self.files[shard], "rb")
        return f

    def read(self, i: int) -> tuple[bytes, str]:
        """(file bytes, PIL format) of image `i`; the tar header before it must name it, so that a
        shard whose bytes moved is reported rather than read as other images."""
        shard, offset, length = int(self.shard[i]), int(self.offset[i]), int(self.length[i])
        f = self._file(shard)
        f.seek(offset - tarfile.BLOCKSIZE)
        block = f.read(tarfile.BLOCKSIZE + length)
        name = block[:100].split(b"\0", 1)[0].decode("ascii", "replace")
        key = f"{i:0{KEY_DIGITS}d}."
        if len(block) != tarfile.BLOCKSIZE + length or not name.startswith(key):
            raise DataError(f"shard {self.files[shard]} is damaged: image {i} should follow a header "
                            f"naming {key}*, found {name[:40]!r}")
        return block[tarfile.BLOCKSIZE:], self.formats[int(self.format[i])]

    def pixels(self, i: int, decoder: Callable[[bytes, str], np.ndarray] | None = None) -> np.ndarray:
        """Image `i` decoded by `decoder(file bytes, PIL format)` (default: as stored, uint8 [H, W]
        or [H, W, 3]); a DataError names the shard when it cannot be."""
        data, fmt = self.read(i)
        try:
            return decoder(data, fmt) if decoder else decode(data, fmt, None)
        except Exception as e:  # noqa: BLE001 - an image that cannot be decoded is a damaged shard
            raise DataError(f"shard {self.files[int(self.shard[i])]} is damaged: image {i} cannot be "
                            f"decoded ({e})") from None

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open = {}

    def __getstate__(self):  # to worker processes: no open files
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def channels_first(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] -> [channels, H, W] (grey repeated, colour to ITU-R 601 luma)."""
    if a.ndim == 2:
        return np.repeat(a[None], channels, 0)
    if channels == 3:
        return a.transpose(2, 0, 1)
    return np.asarray(Image.fromarray(a).convert("L"))[None]
