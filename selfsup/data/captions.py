"""Image-caption data, for CLIP-style image-text methods: a folder or tar of images with a
captions file, read as an ImageSet with `texts` (labels None); and captions made from the class
names of a labelled set (`templated`).

Captions files are found by name (any case) anywhere in the folder or tar (tars of any
compression tarstream.py reads); the name says the format:
    captions.txt, captions.csv    CSV with a header naming an image column (image, filename,
                                  file_name, path, ...) and a caption column (caption, text,
                                  comment, ...), as Flickr8k ships it: "image,caption". Comma-,
                                  tab- or |-separated, as the header line shows.
    captions.jsonl                one {"image": ..., "caption": ...} object per line
    captions.json, captions_*.json  COCO captions: {"images": [{"id", "file_name"}, ...],
                                  "annotations": [{"image_id", "caption"}, ...]}, e.g.
                                  annotations/captions_train2017.json
An image's captions are gathered in file order, each stripped of surrounding white space.

Matching. An image name of the captions file is, in this order: the path of an image relative
to the captions file's folder; relative to an images/ folder beside it; else the base name of
exactly one image (of the split folder, for a captions file in one). Images are kept in sorted
path order.

Splits. A captions file in a split folder (train/, test/, val/, ... anywhere on its path, as in
folder.py) serves that split and captions the images under that folder; a COCO file named after
a split (captions_val2017.json) serves that split. Otherwise the source has one captions file
and no split folders: split "train" / "test" is a split by image, never by caption row:
round(holdout * N) images drawn with `seed` are the test split, the rest train; "all" is every
image; any other split is refused.

Bad input. DataError naming the captions file (and the line, or COCO list index): a file that
is not UTF-8; a CSV header without the two columns, a row with another number of fields; a
JSONL line that is not an object with "image" and "caption"; COCO JSON without its lists or
keys, or an annotation of an image id it does not list; a caption naming an image the source
does not have (the issue asks for missing images by name: a captions file and images that
disagree are two different datasets, and dropping the pairs would train on a quiet subset);
a base name shared by several images; two captions files for one split (both named). Skipped
with a DataWarning and a count: empty captions (white space only: the image keeps its other
captions), images no caption names (the source's, or of the split folder, or for a COCO file
named after a split, those in the folders of its images), undecodable images (as folder.py;
data.strict raises). Images must decode to one size, or data.image_size must be set.

Cache. The decoded images with their captions are cached as image folders are (cache.py),
keyed by the source's identity (a tar's size and mtime; a folder's listing, captions file
included). A source without split folders is cached whole, so its train and test splits cost
one read and one decode between them.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import cache
from .decode import FORMATS
from .folder import SPLIT_ALIASES, Entry, Listing, decode_entries, is_tar, list_source, source_name, warn_skipped
from .imageset import DataError, DataWarning, ImageSet

CSV_FILES = ("captions.txt", "captions.csv")
JSONL_FILES = ("captions.jsonl",)
_COCO_FILE = re.compile(r"captions(_.*)?\.json")
_COCO_SPLIT = re.compile(r"captions_([a-z]+?)\d*\.json")
_SPLIT_OF = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}
WHOLE_SPLITS = ("train", "test", "all")
# Header words, compared lowercased without separators; the first column matching is taken.
_IMAGE_HEADERS = ("image", "imagename", "imagefile", "imagepath", "img", "file", "filename", "filepath", "path")
_CAPTION_HEADERS = ("caption", "captions", "text", "comment", "sentence", "description")
_SHOWN = 5

# CLIP's CIFAR-10 prompts (Radford et al. 2021): the first nine of the eighteen listed under
# "CIFAR10" in https://github.com/openai/CLIP/blob/main/data/prompts.md.
TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
]


def is_captions_file(name: str) -> bool:
    n = name.lower()
    return n in CSV_FILES or n in JSONL_FILES or bool(_COCO_FILE.fullmatch(n))


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


# ---- parsing: rows of (image name, caption, where in the file) ----------------------------

def _csv(text: str, origin: str) -> list[tuple]:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = next((d for d in (",", "\t", "|") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    header, rows = None, []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = fields
                norm = [_norm(f) for f in fields]
                img = next((k for k, h in enumerate(norm) if h in _IMAGE_HEADERS), None)
                cap = next((k for k, h in enumerate(norm) if h in _CAPTION_HEADERS), None)
                if img is None or cap is None:
                    what, names = ("image", _IMAGE_HEADERS) if img is None else ("caption", _CAPTION_HEADERS)
                    raise DataError(f"captions file {origin}: its header {_short(delim.join(fields))} has no "
                                    f"{what} column (one of: {', '.join(names)})")
                continue
            if len(fields) != len(header):
                raise DataError(f"captions file {origin} line {reader.line_num}: {len(fields)} fields where "
                                f"its header has {len(header)} (a caption with an unquoted {delim!r}?)")
            rows.append((fields[img].strip(), fields[cap], f"line {reader.line_num}"))
    except csv.Error as e:
        raise DataError(f"captions file {origin} line {reader.line_num}: {e}") from None
    if header is None:
        raise DataError(f"captions file {origin} is empty")
    return rows


def _jsonl(text: str, origin: str) -> list[tuple]:
    rows = []
    # Split on newlines only: str.splitlines would also cut at U+2028, which JSON strings may hold.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"captions file {origin} line {n} is not JSON: {e.msg}") from None
        if not isinstance(obj, dict) or "image" not in obj or "caption" not in obj:
            raise DataError(f'captions file {origin} line {n}: expected an object with "image" and '
                            f'"caption", got {_short(obj)}')
        rows.append((obj["image"], obj["caption"], f"line {n}"))
    return rows


def _coco_id(value, origin: str, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"COCO captions file {origin}: {where} must be a number or a string, got {_short(value)}")
    return value


def _coco(text: str, origin: str) -> list[tuple]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"captions file {origin} is not JSON: {e.msg} (line {e.lineno})") from None
    what = f"COCO captions file {origin}"
    if not isinstance(doc, dict):
        raise DataError(f'{what}: expected an object with "images" and "annotations", got {type(doc).__name__}')
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise DataError(f'{what} has no "{key}" list')
    files = {}
    for i, im in enumerate(doc["images"]):
        lacks = [k for k in ("id", "file_name") if not isinstance(im, dict) or k not in im]
        if lacks:
            raise DataError(f'{what}: images[{i}] has no "{lacks[0]}"')
        key = _coco_id(im["id"], origin, f'images[{i}]["id"]')
        if files.setdefault(key, im["file_name"]) != im["file_name"]:
            raise DataError(f"{what}: image id {key!r} names two files, {files[key]!r} and {im['file_name']!r}")
    rows = []
    for i, a in enumerate(doc["annotations"]):
        lacks = [k for k in ("image_id", "caption") if not isinstance(a, dict) or k not in a]
        if lacks:
            raise DataError(f'{what}: annotations[{i}] has no "{lacks[0]}"')
        key = _coco_id(a["image_id"], origin, f'annotations[{i}]["image_id"]')
        if key not in files:
            raise DataError(f"{what}: annotations[{i}] is of image id {key!r}, which its images list lacks")
        rows.append((files[key], a["caption"], f"annotations[{i}]"))
    return rows


def parse(lf: Entry) -> list[tuple[str, str, str]]:
    """(image name, caption, where) of each caption of the captions file `lf`, in file order."""
    data = lf.data
    if lf.error is None and isinstance(data, str):
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            lf.error = e.strerror or str(e)
    if lf.error is not None:
        raise DataError(f"cannot read the captions file {lf.origin}: {lf.error}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"captions file {lf.origin} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    name = lf.parts[-1].lower()
    read = _jsonl if name.endswith(".jsonl") else _coco if name.endswith(".json") else _csv
    rows = read(text, lf.origin)
    for image, caption, where in rows:
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"captions file {lf.origin} {where}: the image name must be a non-empty string, "
                            f"got {_short(image)}")
        if not isinstance(caption, str):
            raise DataError(f"captions file {lf.origin} {where}: the caption must be a string, got {_short(caption)}")
    if not rows:
        raise DataError(f"captions file {lf.origin} lists no captions")
    return rows


# ---- which captions file, which images -----------------------------------------------------

def _split_of(lf: Entry) -> tuple[str | None, tuple[str, ...] | None]:
    """The split the captions file serves (None: the source's only one) and the folder of the
    images it may caption: a split folder, () for the whole source, None for COCO's named files."""
    folders = lf.parts[:-1]
    for k in range(len(folders) - 1, -1, -1):
        if folders[k].lower() in _SPLIT_OF:
            return _SPLIT_OF[folders[k].lower()], folders[: k + 1]
    m = _COCO_SPLIT.fullmatch(lf.parts[-1].lower())
    if m and m.group(1) in _SPLIT_OF:
        return _SPLIT_OF[m.group(1)], None
    return None, ()


def _refuse_split(source: Path, split: str) -> DataError:
    return DataError(f"{source} has no split folders, so its images are split by data.holdout into "
                     f"'train' and 'test' ('all': every image); load it with one of those rather than {split!r}")


def _choose(files: list[Entry], split: str, source: Path) -> tuple[Entry, tuple[str, ...] | None, bool]:
    """The captions file of `split`, the folder of its images (see _split_of), and whether it
    serves the whole source (to be split by holdout)."""
    found = [(lf, *_split_of(lf)) for lf in files]
    named = [x for x in found if x[1] is not None]
    if named:
        loose = [lf for lf, s, _ in found if s is None]
        if loose:
            raise DataError(f"{source} has captions files both in split folders and outside them "
                            f"({named[0][0].origin}, {loose[0].origin}); keep one per split folder")
        chosen = [x for x in named if x[1] == split]
        if not chosen:
            raise DataError(f"{source} has captions files for split(s) {sorted({s for _, s, _ in named})} "
                            f"but none for split {split!r}")
        if len(chosen) > 1:
            raise DataError(f"{source} has {len(chosen)} captions files for split {split!r}: "
                            f"{_shown([lf.origin for lf, _, _ in chosen])}; keep one")
        return chosen[0][0], chosen[0][2], False
    if len(files) > 1:
        raise DataError(f"{source} has {len(files)} captions files: {_shown([lf.origin for lf in files])}; keep one")
    if split not in WHOLE_SPLITS:
        raise _refuse_split(source, split)
    return files[0], (), True


def _find(name: str, folder: str, by_path: dict[str, int], by_base: dict[str, list[int]],
          lf: Entry, where: str) -> int | None:
    for base in (folder, posixpath.join(folder, "images")):
        path = posixpath.normpath(posixpath.join(base, name))
        if path in by_path:
            return by_path[path]
    hits = by_base.get(posixpath.basename(name), [])
    if len(hits) > 1:
        raise DataError(f"captions file {lf.origin} {where}: image {name!r} is neither beside it nor in "
                        f"images/ beside it, and {len(hits)} images have its base name; give its path")
    return hits[0] if hits else None


def _captions_of(rows, lf: Entry, images: list[Entry], source: Path) -> tuple[dict[int, list[str]], list[str]]:
    """{index into `images`: its captions in file order}, and the warnings to give."""
    by_path = {"/".join(e.parts): i for i, e in enumerate(images)}
    by_base: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(images):
        by_base[e.parts[-1]].append(i)
    folder = "/".join(lf.parts[:-1])
    found: dict[str, int | None] = {}
    captions: dict[int, list[str]] = {}
    empty, missing = [], {}
    for image, caption, where in rows:
        caption = caption.strip()
        if not caption:
            empty.append(where)
            continue
        name = image.strip().replace("\\", "/")
        if name not in found:
            found[name] = _find(name, folder, by_path, by_base, lf, where)
        if found[name] is None:
            missing.setdefault(name, where)
        else:
            captions.setdefault(found[name], []).append(caption)
    if missing:
        first, where = next(iter(missing.items()))
        raise DataError(f"captions file {lf.origin} names {len(missing)} image(s) that {source} does not have, "
                        f"the first being {first!r} ({where})")
    if not captions:
        raise DataError(f"captions file {lf.origin} gives no image a caption that is not empty")
    notes = [f"{lf.origin}: skipped {len(empty)} empty caption(s), the first at {empty[0]}"] if empty else []
    return captions, notes


def read_captions(path: Path, listing: Listing, lf: Entry, scope: tuple[str, ...] | None, image_size: int | None,
                  strict: bool, name: str, split: str) -> tuple[ImageSet, list[str], list[str]]:
    """Decode the images `lf` captions (for `split`, in messages) into an ImageSet with texts;
    also returns the undecodable images skipped and the other warnings (see the module docstring)."""
    images = [e for e in listing.images if scope is None or e.parts[: len(scope)] == scope]
    rows = parse(lf)
    captions, notes = _captions_of(rows, lf, images, path)
    folders = {images[i].parts[:-1] for i in captions}
    bare = [e.origin for i, e in enumerate(images)
            if i not in captions and (scope is not None or e.parts[:-1] in folders)]
    if bare:
        notes.append(f"skipped {len(bare)} image(s) of {path} that {lf.origin} gives no caption: {_shown(bare)}")
    chosen = sorted(captions, key=lambda i: images[i].parts)
    entries = [images[i] for i in chosen]
    decoded, good, skipped = decode_entries(entries, image_size, strict, path, split)
    texts = [captions[chosen[i]] for i in good]
    return ImageSet(decoded, None, None, name, texts), skipped, notes


# ---- loading -------------------------------------------------------------------------------

def split_by_image(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of n images: round(holdout * n) drawn with `seed` for test."""
    test = np.sort(np.random.default_rng(seed).permutation(n)[: int(round(holdout * n))])
    return np.setdiff1d(np.arange(n), test), test


def _take(ds: ImageSet, source: Path, split: str, whole: bool, holdout: float, seed: int) -> ImageSet:
    if not whole or split == "all":
        return ds
    if split not in WHOLE_SPLITS:
        raise _refuse_split(source, split)
    train, test = split_by_image(len(ds), holdout, seed)
    idx = test if split == "test" else train
    if len(idx) == 0:
        raise DataError(f"data.holdout={holdout} of the {len(ds)} images of {source} leaves no {split} "
                        f"images; change data.holdout")
    return ds.subset(idx)


def _hit(entry: Path | None, name: str, strict: bool, path: Path) -> ImageSet | None:
    hit = cache.load(entry, name) if entry is not None else None
    # An entry made while skipping bad files must not satisfy a strict load.
    if hit is None or (strict and hit.skipped):
        return None
    _warn(path, hit.ds, hit.skipped, hit.notes)
    return hit.ds


def _warn(path: Path, ds: ImageSet, skipped: list[str], notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=5)
    warn_skipped(path, skipped, len(ds) + len(skipped))


def from_cache(path: Path, split: str, image_size: int | None, strict: bool, holdout: float,
               seed: int, name: str | None = None) -> ImageSet | None:
    """The split of the captions tar at `path` from the decode cache, without reading the tar
    (its entry is keyed by the tar's size and mtime); None when there is none."""
    path = Path(path).absolute()
    for key, whole in (("all", True), (split, False)):
        ds = _hit(cache.cache_file(path, key, image_size, (), "captions"), name or source_name(path), strict, path)
        if ds is not None:
            return _take(ds, path, split, whole, holdout, seed)
    return None


def list_captioned(path: Path) -> Listing:
    """The images, label files and captions files (Listing.extra) of a folder or tar: one read."""
    return list_source(path, is_captions_file)


def load_captions(
    path: Path, split: str = "train", image_size: int | None = None, strict: bool = False,
    cache_ok: bool = True, holdout: float = 0.1, seed: int = 0, listing: Listing | None = None,
    name: str | None = None,
) -> ImageSet:
    """One split of an image-caption folder or tar, as an ImageSet with texts, behind the decode
    cache. split, image_size, strict, cache_ok: as for image folders (folder.load_image_folder);
    holdout, seed: the split by image of a source without split folders (see the module
    docstring); listing: list_captioned's, when the caller has it already."""
    path = Path(path).absolute()
    name = name or source_name(path)
    if listing is None:
        if cache_ok and is_tar(path):
            ds = from_cache(path, split, image_size, strict, holdout, seed, name)
            if ds is not None:
                return ds
        listing = list_captioned(path)
    if not listing.extra:
        raise DataError(f"no captions file in {path} (looked for {', '.join(CSV_FILES + JSONL_FILES)}, "
                        f"captions.json, captions_*.json)")
    if not listing.images:
        raise DataError(f"no images in {path} (extensions read: {' '.join(FORMATS)})")
    lf, scope, whole = _choose(listing.extra, split, path)
    files = () if is_tar(path) else listing.files
    entry = cache.cache_file(path, "all" if whole else split, image_size, files, "captions") if cache_ok else None
    ds = _hit(entry, name, strict, path)
    if ds is None:
        ds, skipped, notes = read_captions(path, listing, lf, scope, image_size, strict, name,
                                           "all" if whole else split)
        _warn(path, ds, skipped, notes)
        if entry is not None:
            cache.save(entry, ds, skipped, notes)
    return _take(ds, path, split, whole, holdout, seed)


# ---- captions from class names ---------------------------------------------------------------

def templated(ds: ImageSet, templates: list[str] | None = None) -> ImageSet:
    """`ds` with texts: for each image, every template with its class name in place of "{}"
    (underscores shown as spaces: "golden_retriever" -> "golden retriever"). templates: None or
    [] for TEMPLATES. DataError for a set without labels or class names."""
    templates = list(templates or TEMPLATES)
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise DataError(f"caption template {_short(t)} must hold one {{}} for the class name")
    if ds.labels is None or ds.classes is None:
        raise DataError(f"ImageSet {ds.name!r} has no {'labels' if ds.labels is None else 'class names'}, "
                        f"so no captions can be made from class names; use a labelled dataset with class "
                        f"names, or an image-caption source")
    labels = ds.labels.tolist()
    if labels and not (0 <= min(labels) and max(labels) < len(ds.classes)):
        raise DataError(f"ImageSet {ds.name!r} has labels outside its {len(ds.classes)} class names")
    per_class = [[t.replace("{}", c.replace("_", " ")) for t in templates] for c in ds.classes]
    return ImageSet(ds.images, ds.labels, ds.classes, ds.name, [list(per_class[k]) for k in labels])
