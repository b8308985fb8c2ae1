"""Label files of splits whose images are not sorted into class folders, as in ImageNet's and
Tiny ImageNet's validation splits.

Read: Tiny ImageNet's `val_annotations.txt` (file, class, box, tab-separated), ImageNet's
`LOC_val_solution.csv` (ImageId, PredictionString whose first word is the class), and a generic
`labels.csv` / `labels.txt` (file name and class name per line, comma- or whitespace-separated,
optional header). Inside a split folder any of these names is looked for; beside it, only the
ones named after the split (`val_labels.csv`, `LOC_val_solution.csv`, ...).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from .imageset import DataError

if TYPE_CHECKING:
    from .folder import Entry

GENERIC = ("labels.csv", "labels.txt")
# Header words of the first two columns, compared lowercased without separators.
_FILE_HEADERS = {"file", "filename", "fname", "filepath", "path", "image", "imageid", "imagename",
                 "img", "id", "name"}
_CLASS_HEADERS = {"class", "classname", "label", "labelname", "category", "target", "synset",
                  "wnid", "predictionstring"}
_LOC_HEADER = ["ImageId", "PredictionString"]


def named_after(split: str) -> tuple[str, ...]:
    """The label-file names (lowercase) that belong to the split folder `split`."""
    s = split.lower()
    return (f"{s}_labels.csv", f"{s}_labels.txt", f"{s}_annotations.txt", f"loc_{s}_solution.csv")


def is_label_file(name: str) -> bool:
    n = name.lower()
    return (n in GENERIC or n.endswith(("_labels.csv", "_labels.txt", "_annotations.txt"))
            or (n.startswith("loc_") and n.endswith("_solution.csv")))


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _rows(text: str, comma: bool) -> list[tuple[int, list[str]]]:
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if comma:
        return [(n, row) for (n, _), row in zip(lines, csv.reader([ln for _, ln in lines]))]
    return [(n, ln.split()) for n, ln in lines]


def parse(data: bytes, where: str) -> dict[str, str]:
    """{image name (its last path component): class name} of one label file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"label file {where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    rows = _rows(text, where.lower().endswith(".csv") or ("," in first and "\t" not in first))
    loc = bool(rows) and [f.strip() for f in rows[0][1]] == _LOC_HEADER
    if rows and (loc or _norm(rows[0][1][0]) in _FILE_HEADERS
                 or (len(rows[0][1]) > 1 and _norm(rows[0][1][1]) in _CLASS_HEADERS)):
        rows = rows[1:]
    if not rows:
        raise DataError(f"label file {where} lists no images")
    labels: dict[str, tuple[str, int]] = {}
    for n, fields in rows:
        fields = [f.strip() for f in fields]
        if loc and len(fields) > 1:  # "n01751748 x y w h n01751748 ...": the first box's class
            fields[1] = (fields[1].split() or [""])[0]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise DataError(f"label file {where} line {n}: expected a file name and a class, "
                            f"got {','.join(fields)!r}")
        name, cls = fields[0].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1], fields[1]
        if name in labels and labels[name][0] != cls:
            raise DataError(f"label file {where} gives {name} two classes: {labels[name][0]!r} "
                            f"(line {labels[name][1]}) and {cls!r} (line {n})")
        labels[name] = (cls, n)
    return {name: cls for name, (cls, _) in labels.items()}


def assign(labels: dict[str, str], names: list[str], where: str, what: str) -> list[str]:
    """The class of each image name, matched by file name or by file name without extension
    (ImageNet lists ids). Every image must have a row, and every row an image: either gap
    means the file and the folder describe different sets, and a guess would mislabel."""
    out, used, missing = [], set(), []
    for name in names:
        stem = name.rsplit(".", 1)[0]
        key = name if name in labels else stem if stem in labels else None
        if key is None:
            missing.append(name)
            continue
        used.add(key)
        out.append(labels[key])
    if missing:
        raise DataError(f"label file {where} has no row for {len(missing)} image(s) of {what}, "
                        f"the first being {missing[0]}")
    unused = [k for k in labels if k not in used]
    if unused:
        raise DataError(f"label file {where} lists {len(unused)} file(s) that are not images of "
                        f"{what}, the first being {unused[0]}")
    return out


def find(label_files: list[Entry], prefix: tuple[str, ...], split_dir: str, source: Path) -> Entry | None:
    """The label file of a flat split folder: inside it under any label-file name, or beside it
    or beside any wrapper folder above it (`prefix`) under a name that is the split's own.
    `split_dir` "" means a folder without split folders, which is its own split, named after
    the folder or tar."""
    inside = prefix + ((split_dir,) if split_dir else ())
    own = named_after(split_dir or source.name.split(".")[0])
    found = [lf for lf in label_files
             if (lf.parts[:-1] == inside and lf.parts[-1].lower() in (*GENERIC, *own))
             or (len(lf.parts) - 1 <= len(prefix) and lf.parts[:-1] == prefix[: len(lf.parts) - 1]
                 and lf.parts[-1].lower() in (own if split_dir else (*GENERIC, *own)))]
    if len(found) > 1:
        raise DataError(f"{source} has {len(found)} label files for {split_dir or 'its images'}: "
                        f"{', '.join(lf.origin for lf in found)}; keep one")
    return found[0] if found else None


def classes_of(lf: Entry, images: list[Entry], what: str) -> list[str]:
    """The class of each of `images` (matched by file name) in the label file `lf`."""
    data = lf.data
    if isinstance(data, str):
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read the label file {lf.origin}: {e.strerror or e}") from None
    return assign(parse(data, lf.origin), [e.parts[-1] for e in images], lf.origin, what)
