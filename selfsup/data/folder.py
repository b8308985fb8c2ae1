"""Image folders and tars of them.

Layouts, looked for in this order below any single wrapper folder:
    split/class/file   split subfolders (train, test, val, unlabeled, ...): `split` picks one
    class/file         labelled; classes are the sorted subfolder names
    file               flat: labelled by a label file when there is one (labelfile.py, e.g.
                       ImageNet's and Tiny ImageNet's val splits, whose images lie in `val/` or
                       `val/images/`), else unlabelled
Classes are the class folders of all splits, so one class name has one label in every split.
Tars are streamed and never extracted to disk. Non-image files (by extension) and hidden files
are skipped silently; images that fail to decode are skipped with one warning (data.strict=true
raises instead). Directory links are followed, each real folder once (see _walk). A folder or
tar holding a captions file is image-caption data, read by captions.py with this module's
listing and decoding (registry.py routes it).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cache, labelfile
from .decode import FORMATS, decode, image_format, stack
from .imageset import DataError, DataWarning, ImageSet
from .tarstream import read_tar

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
# Caps on the tar members held in memory: an image file over this is no photograph (PIL's
# decompression-bomb limit refuses it anyway), and a header may claim any size.
_MAX_IMAGE = 512 << 20
_MAX_LABEL_FILE = 256 << 20


@dataclass
class Entry:
    parts: tuple[str, ...]  # path inside the folder or tar, split into printable components
    data: bytes | str  # file bytes (tar members) or a file path (folders)
    fmt: str | None  # PIL format; None for a label file
    origin: str  # where the file is, for messages: its path, or "<tar>:<member name>"
    error: str | None = None  # why it cannot be read, when that is known before decoding
    label: str | None = None  # class name, once the layout is known


@dataclass
class Listing:
    """What a folder or tar holds: images, label files, the other files asked for (`extra` of
    list_source: captions files), and what could not be taken in."""

    images: list[Entry]
    label_files: list[Entry]
    files: list[tuple[str, os.stat_result | None]] = field(default_factory=list)  # for the cache key
    skipped_links: list[str] = field(default_factory=list)
    extra: list[Entry] = field(default_factory=list)


def is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def source_name(path: Path) -> str:
    name = path.name
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def printable(name: str) -> str:
    """A file name that is not valid UTF-8 with its odd bytes written as \\xNN, so that class
    names and messages can be printed and saved; the same bytes always give the same name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _visible(parts: tuple[str, ...]) -> bool:
    # Dot files include macOS "._x.jpg" resource forks, which have image extensions.
    return all(p and not p.startswith(".") and p != "__MACOSX" for p in parts)


def _cannot_list(e: OSError):
    raise DataError(f"cannot list the folder {printable(str(e.filename))}: {e.strerror or e}")


def _own_dirs(root: str) -> dict[str, str]:
    """{real path: path} of the folders below `root` reached without following a link."""
    out = {}
    for dirpath, dirnames, _ in os.walk(root, onerror=_cannot_list):
        dirnames[:] = [d for d in dirnames if _visible((d,))]
        out[os.path.realpath(dirpath)] = dirpath
    return out


def _walk(root: str, skipped: list[str]):
    """os.walk following directory links, reading each real folder once: at its own place when
    it has one below `root`, else through the first link to it in sorted order. So a link loop
    (a class folder holding a link to the root or to another class) neither repeats images nor
    labels them with the wrong class. The links not followed are appended to `skipped`."""
    seen = {os.path.realpath(root)}
    own: dict[str, str] | None = None  # only needed, and walked, once a link is met
    linked: set[str] = set()  # folders reached through a link
    for dirpath, dirnames, filenames in os.walk(root, onerror=_cannot_list, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if _visible((d,))):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if dirpath in linked or os.path.islink(full):
                own = _own_dirs(root) if own is None else own
                if real in seen or own.get(real, full) != full:
                    skipped.append(printable(os.path.relpath(full, root)))
                    continue
                linked.add(full)
            seen.add(real)
            kept.append(d)
        dirnames[:] = kept
        yield dirpath, sorted(filenames)


def _kind(name: str, extra: Callable[[str], bool] | None) -> str | None:
    """"image", "label" or "extra" for a file name this module reads, None for any other."""
    return ("image" if image_format(name) else "label" if labelfile.is_label_file(name)
            else "extra" if extra is not None and extra(name) else None)


def _list_folder(path: Path, extra: Callable[[str], bool] | None = None) -> Listing:
    root = str(path)
    listing = Listing([], [])
    groups = {"image": listing.images, "label": listing.label_files, "extra": listing.extra}
    for dirpath, filenames in _walk(root, listing.skipped_links):
        rel = () if dirpath == root else tuple(os.path.relpath(dirpath, root).split(os.sep))
        for name in filenames:
            fmt = image_format(name)
            kind = _kind(name, extra) if _visible((name,)) else None
            if kind is None:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
                error = None if stat.S_ISREG(st.st_mode) else "not a regular file"
            except OSError as e:  # a dangling link, or a file removed since the folder was listed
                st, error = None, e.strerror or str(e)
            parts = tuple(printable(p) for p in rel + (name,))
            listing.files.append(("/".join(parts), st))
            groups[kind].append(Entry(parts, full, fmt, printable(full), error))
    return listing


def _list_tar(path: Path, extra: Callable[[str], bool] | None = None) -> Listing:
    """The tar's image, label and `extra` members, held in memory (compressed images are small
    next to the decoded set). A link to a member is that member again, as on disk; a link to a
    folder of the archive is skipped, as _walk skips a second path to a folder."""

    def keep(name: str) -> int:
        parts = tuple(name.split("/"))
        kind = _kind(parts[-1], extra) if _visible(parts) else None
        return 0 if kind is None else _MAX_IMAGE if kind == "image" else _MAX_LABEL_FILE

    contents = read_tar(path, keep)
    listing = Listing([], [])
    groups = {"image": listing.images, "label": listing.label_files, "extra": listing.extra}
    members = dict(contents.data)
    folders = {parent for name in members for parent in _parents(name)}
    problems = {name: f"larger than the {keep(name) >> 20} MiB {'an image' if image_format(name) else 'such a'} "
                      f"file may be" for name in contents.too_big}
    for link, target in contents.links.items():
        for _ in range(8):  # a link to a link
            target = contents.links.get(target, target)
        if not _visible(tuple(link.split("/"))):
            continue
        if target in folders:
            listing.skipped_links.append(printable(link))
        elif not keep(link):
            continue
        elif target in members:
            members[link] = members[target]
        else:
            problems[link] = problems.get(target, f"a link to {printable(target)}, which is not a file of the archive")
    for name, data in sorted(members.items()):
        groups[_kind(name.split("/")[-1], extra)].append(
            Entry(_tar_parts(name), data, image_format(name), printable(f"{path}:{name}")))
    for name, why in sorted(problems.items()):
        kind = _kind(name.split("/")[-1], extra)
        if kind != "label":  # (a label file that cannot be held is left out, as before)
            groups[kind].append(Entry(_tar_parts(name), b"", image_format(name), printable(f"{path}:{name}"), why))
    return listing


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _tar_parts(name: str) -> tuple[str, ...]:
    return tuple(printable(p) for p in name.split("/"))


def _strip_wrappers(images: list[Entry]) -> tuple[str, ...]:
    """Drop folders that wrap everything, as in a tar made with `tar czf x.tgz mydata/`, and
    return them. (So a folder with a single class folder reads as unlabelled, which is all it
    can be.)"""
    prefix: tuple[str, ...] = ()
    while images and all(len(e.parts) > 1 for e in images):
        tops = {e.parts[0] for e in images}
        if len(tops) != 1 or next(iter(tops)).lower() in SPLIT_DIRS:
            break
        prefix += (images[0].parts[0],)
        for e in images:
            e.parts = e.parts[1:]
    return prefix


def _is_flat(group: list[Entry]) -> bool:
    """All images directly in the split folder, or all directly in its images/ subfolder."""
    return (all(len(e.parts) == 1 for e in group)
            or all(len(e.parts) == 2 and e.parts[0].lower() == "images" for e in group))


def select_split(listing: Listing, split: str, source: Path) -> tuple[list[Entry], list[str] | None, int]:
    """The entries of `split` with their class names set, the class names (None when
    unlabelled), and how many loose files were ignored beside class folders."""
    prefix = _strip_wrappers(listing.images)
    tops = {e.parts[0] for e in listing.images if len(e.parts) > 1}
    split_dirs = sorted(t for t in tops if t.lower() in SPLIT_DIRS)
    if split_dirs:
        wanted = SPLIT_ALIASES.get(split, (split,))
        chosen = [t for t in split_dirs if t.lower() in wanted]
        if not chosen:
            raise DataError(f"{source} has split folders {split_dirs} but none for split {split!r}")
        groups = {t: [e for e in listing.images if e.parts[0] == t] for t in split_dirs}
        for group in groups.values():
            for e in group:
                e.parts = e.parts[1:]
        chosen_dir = chosen[0]
    else:
        if split not in WHOLE_SPLITS:
            raise DataError(
                f"{source} has no split folders (looked for {', '.join(sorted(SPLIT_DIRS))}), so it "
                f"holds one set; load it with split='train' rather than {split!r}"
            )
        groups, chosen_dir = {"": listing.images}, ""
    flat = {t for t, g in groups.items() if _is_flat(g)}
    folder_classes = sorted({e.parts[0] for t, g in groups.items() if t not in flat for e in g if len(e.parts) > 1})
    entries = sorted(groups[chosen_dir], key=lambda e: e.parts)
    what = f"split {chosen_dir!r} of {source}" if chosen_dir else str(source)

    if chosen_dir not in flat:
        labelled = [e for e in entries if len(e.parts) > 1]
        for e in labelled:
            e.label = e.parts[0]
        return labelled, folder_classes, len(entries) - len(labelled)
    lf = labelfile.find(listing.label_files, prefix, chosen_dir, source)
    if lf is None:
        return entries, None, 0
    for e, label in zip(entries, labelfile.classes_of(lf, entries, what)):
        e.label = label
    classes = folder_classes
    if not classes:  # no class folders anywhere: the label files of all flat splits name them
        classes = {e.label for e in entries}
        for t in sorted(flat - {chosen_dir}):
            other = labelfile.find(listing.label_files, prefix, t, source)
            if other is not None:
                classes.update(labelfile.classes_of(other, groups[t], f"split {t!r} of {source}"))
        classes = sorted(classes)
    unknown = sorted({e.label for e in entries} - set(classes))
    if unknown:
        raise DataError(f"label file {lf.origin} names {len(unknown)} class(es) that are not class "
                        f"folders of {source} (e.g. {unknown[0]!r}); its classes are {', '.join(classes[:5])}"
                        f"{', ...' if len(classes) > 5 else ''}")
    return entries, classes, 0


def _decode_chunk(chunk: list[Entry], image_size: int | None) -> list[np.ndarray | Exception]:
    out: list[np.ndarray | Exception] = []
    for e in chunk:
        if e.error is not None:
            out.append(OSError(e.error))
            continue
        try:
            out.append(decode(e.data, e.fmt, image_size))
        except Exception as err:  # noqa: BLE001 - any decoder failure means "this file is unreadable"
            out.append(err)
    return out


def _decode_all(entries: list[Entry], image_size: int | None) -> list[np.ndarray | Exception]:
    """Decode in a thread pool: PIL and simplejpeg release the GIL while decoding, and threads need no
    pickling of bytes or arrays between processes. More threads than cores measured faster
    (the GIL-holding header parsing of one image overlaps the decoding of others)."""
    chunks = [entries[i : i + _CHUNK] for i in range(0, len(entries), _CHUNK)]
    workers = min(16, 2 * (os.cpu_count() or 1), len(chunks))
    if workers <= 1:
        return [r for c in chunks for r in _decode_chunk(c, image_size)]
    with ThreadPoolExecutor(workers) as pool:
        return [r for rs in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)) for r in rs]


def decode_entries(entries: list[Entry], image_size: int | None, strict: bool, path: Path,
                   split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode `entries` in a thread pool into one uint8 [N, C, H, W] array; also returns the
    indices of the entries decoded and the names of those skipped as undecodable (strict: a
    DataError at the first). All must come out one size, or a DataError names two that differ."""
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
                f"set data.image_size=N to resize them (shorter side, then centre crop)"
            )
    return stack([results[i] for i in good]), good, skipped


def list_source(path: Path, extra: Callable[[str], bool] | None = None) -> Listing:
    """The images and label files of a folder or tar, and the files whose names `extra` accepts,
    warning about directory links skipped."""
    listing = _list_tar(path, extra) if is_tar(path) else _list_folder(path, extra)
    if listing.skipped_links:
        links = listing.skipped_links
        shown = ", ".join(links[:_WARN_FIRST]) + (", ..." if len(links) > _WARN_FIRST else "")
        warnings.warn(f"{path}: skipped {len(links)} folder link(s) to folders read at another place "
                      f"(a link loop or a second path to one folder): {shown}", DataWarning, stacklevel=4)
    return listing


def read_image_folder(
    path: Path, split: str = "train", image_size: int | None = None, strict: bool = False,
    name: str | None = None, listing: Listing | None = None,
) -> tuple[ImageSet, list[str]]:
    """Decode an image folder or tar into an ImageSet; also returns the skipped files' names."""
    path = Path(path)
    listing = listing or list_source(path)
    kind = "tar" if is_tar(path) else "folder"
    if not listing.images:
        raise DataError(f"no images in the {kind} {path} (extensions read: {' '.join(FORMATS)})")
    entries, classes, loose = select_split(listing, split, path)
    if loose:
        warnings.warn(f"{path}: ignored {loose} image(s) lying beside the class folders", DataWarning, stacklevel=3)
    if not entries:
        raise DataError(f"no images for split {split!r} in the {kind} {path}")

    images, good, skipped = decode_entries(entries, image_size, strict, path, split)
    labels = None
    if classes is not None:
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[entries[i].label] for i in good], dtype=np.int64)
    return ImageSet(images, labels, classes, name or source_name(path)), skipped


def warn_skipped(path: Path, skipped: list[str], total: int) -> None:
    if skipped:
        shown = ", ".join(skipped[:_WARN_FIRST]) + (", ..." if len(skipped) > _WARN_FIRST else "")
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) of {total} in {path}: {shown} "
            f"(set data.strict=true to stop instead)",
            DataWarning,
            stacklevel=4,
        )


def load_image_folder(
    path: Path, split: str = "train", image_size: int | None = None, strict: bool = False,
    cache_ok: bool = True, name: str | None = None, listing: Listing | None = None,
) -> ImageSet:
    """read_image_folder behind the decoded-array cache (see cache.py). A folder is listed
    first, since its listing is its cache key; a tar is keyed by its size and mtime. `listing`:
    the source's, when the caller has listed it already."""
    path = Path(path).absolute()
    name = name or source_name(path)
    if listing is None and not is_tar(path):
        listing = list_source(path)
    entry = cache.cache_file(path, split, image_size, listing.files if listing else ()) if cache_ok else None
    if entry is not None:
        hit = cache.load(entry, name)
        # An entry made while skipping bad files must not satisfy a strict load.
        if hit is not None and not (strict and hit.skipped):
            warn_skipped(path, hit.skipped, len(hit.ds) + len(hit.skipped))
            return hit.ds
    ds, skipped = read_image_folder(path, split, image_size, strict, name, listing)
    warn_skipped(path, skipped, len(ds) + len(skipped))
    if entry is not None:
        cache.save(entry, ds, skipped)
    return ds
