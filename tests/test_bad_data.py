"""The catalogue of bad data: damaged archives, link loops, sideways photos, splits labelled by a
label file, and files that cannot be read. Each ends in a DataError whose one line names the
file (and setting), or in a counted skip with a DataWarning; never a traceback, never a
quietly different dataset. Everything is a real file written here: tars, JPEGs with EXIF
written by Pillow, symbolic links, FIFOs."""

import bz2
import gzip
import io
import lzma
import os
import re
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_files import overwrite, png, tar_of, write
from selfsup.data import (
    DataError,
    DataWarning,
    ImageSet,
    check_same_classes,
    load_dataset,
)

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


def jpeg(value: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(b, "JPEG", quality=95)
    return b.getvalue()


def pets(root: Path, classes=("a", "b"), n: int = 3) -> Path:
    """class/i.png, pixel value 10 * class index + i, so every image says where it came from."""
    for k, c in enumerate(classes):
        for i in range(n):
            write(root / c / f"{i}.png", png(10 * k + i))
    return root


def png_noise(seed: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(b, "PNG")
    return b.getvalue()


PETS = {f"pets/{c}/{i}.png": png(10 * k + i) for k, c in enumerate("ab") for i in range(3)}
RAW = tar_of(PETS)
B0 = 3 * 1024  # each member is a 512-byte header and one 512-byte block of PNG: b/0's header


def bomb_header() -> bytes:
    """A tar whose image member claims 1 TiB and holds a few bytes."""
    info = tarfile.TarInfo("pets/b/huge.png")
    info.size = 1 << 40
    return tar_of(dict(list(PETS.items())[:3]))[:B0] + info.tobuf(tarfile.GNU_FORMAT) + png(1) + bytes(1024)


AFTER_A2 = ", after member 'pets/a/2.png'"
AFTER_B2 = ", after member 'pets/b/2.png'"
# Big enough (40 noise images) that damage in the middle of its compressed stream is met after
# some members were read: the case that used to load the first members as the whole set.
BIG = tar_of({f"pets/{c}/{i:02d}.png": png_noise(k * 20 + i) for k, c in enumerate("ab") for i in range(20)})
GZ, GZ_BIG, BZ2 = gzip.compress(RAW, mtime=0), gzip.compress(BIG, mtime=0), bz2.compress(RAW)
SHORT = "is damaged: Compressed file ended before the end-of-stream marker was reached"
DAMAGED = [
    # (id, suffix, archive bytes, what the message must say after the path)
    ("header-plain", ".tar", overwrite(RAW, B0 + 10), f"is damaged: a member header that cannot be read{AFTER_A2}"),
    ("header-gz", ".tar.gz", gzip.compress(overwrite(RAW, B0 + 10)), f"a member header that cannot be read{AFTER_A2}"),
    ("header-bz2", ".tar.bz2", bz2.compress(overwrite(RAW, B0 + 10)), f"a member header that cannot be read{AFTER_A2}"),
    ("gz-crc", ".tar.gz", overwrite(GZ, len(GZ) - 8, b"\0\0\0\0"),
     f"is damaged: CRC check failed 0x0 != 0x{zlib.crc32(RAW):x}"),
    ("gz-length", ".tar.gz", overwrite(GZ, len(GZ) - 4, b"\1\0\0\0"), "is damaged: Incorrect length of data produced"),
    ("gz-bytes", ".tgz", overwrite(GZ_BIG, len(GZ_BIG) // 2, b"\xff" * 16), ", after member 'pets/"),
    ("bz2-bytes", ".tar.bz2", overwrite(BZ2, len(BZ2) // 2, b"\xff" * 16), "is damaged: Invalid data stream"),
    ("cut-in-data", ".tar", RAW[: B0 + 512 + 40], f"is damaged: unexpected end of data{AFTER_A2}"),
    ("cut-in-header", ".tar", RAW[: B0 + 100], f"is damaged: it is cut short (no end-of-archive marker){AFTER_A2}"),
    ("cut-at-member", ".tar", RAW[:B0], f"it is cut short (no end-of-archive marker){AFTER_A2}"),
    ("cut-gz", ".tar.gz", GZ_BIG[: len(GZ_BIG) // 2], f"{SHORT}, after member 'pets/"),
    ("cut-xz", ".tar.xz", lzma.compress(RAW)[:-30], SHORT),
    ("garbage-for-end", ".tar", RAW[: 6 * 1024] + b"not a tar header" * 64,
     f"a member header that cannot be read{AFTER_B2}"),
    ("garbage-after-end", ".tar", RAW + b"trailing garbage",
     f"not zero padding past the end-of-archive marker{AFTER_B2}"),
    ("garbage-after-gz", ".tar.gz", GZ + b"trailing garbage", "is damaged: Not a gzipped file"),
    ("size-bomb", ".tar", bomb_header(), f"is damaged: unexpected end of data{AFTER_A2}"),
    ("empty", ".tar", b"", "cannot read the tar"),
]


def test_the_undamaged_archive_loads(tmp_path):
    for suffix, data in ((".tar", RAW), (".tar.gz", gzip.compress(RAW)), (".tar.xz", lzma.compress(RAW))):
        ds = load_dataset(write(tmp_path / f"pets{suffix}", data))
        assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
        assert ds.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]


@pytest.mark.parametrize("suffix, data, says", [d[1:] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_damaged_archive_is_an_error_naming_it(tmp_path, suffix, data, says):
    path = write(tmp_path / f"pets{suffix}", data)
    with pytest.raises(DataError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert msg.startswith(f"cannot read the tar {path}" if suffix == ".tar" and not data else f"{path} is damaged: ")
    assert says in msg and "\n" not in msg


def test_undecodable_member_is_a_counted_skip(tmp_path):
    files = dict(PETS)
    files["pets/a/1.png"] = b"\x89PNG\r\n\x1a\n but not really"
    path = write(tmp_path / "pets.tar.gz", gzip.compress(tar_of(files)))
    with pytest.warns(DataWarning, match=re.escape(f"skipped 1 unreadable image(s) of 6 in {path}: "
                                                   f"{path}:pets/a/1.png (set data.strict=true to stop instead)")):
        ds = load_dataset(path)
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.classes == ["a", "b"]
    with pytest.raises(DataError, match=re.escape(f"cannot decode image {path}:pets/a/1.png")):
        load_dataset(path, strict=True)


def test_tar_links(tmp_path):
    """A link to an image is that image again; a link to a class folder would be a second path
    to it (skipped, counted); a link to nothing is an unreadable image (counted)."""
    data = tar_of(PETS, {"pets/a/3.png": "0.png", "pets/c": "a", "pets/b/9.png": "../gone.png"})
    path = write(tmp_path / "pets.tar", data)
    with pytest.warns(DataWarning) as got:
        ds = load_dataset(path)
    text = [str(w.message) for w in got]
    assert any("skipped 1 folder link(s)" in t and "pets/c" in t for t in text), text
    assert any(t.startswith(f"skipped 1 unreadable image(s) of 8 in {path}: {path}:pets/b/9.png") for t in text), text
    assert ds.classes == ["a", "b"] and ds.images[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 10, 11, 12]


def test_tar_member_names_that_are_not_utf8(tmp_path):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in {"d/caf\xe9/0.png": png(5), "d/tea/0.png": png(6)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = load_dataset(write(tmp_path / "d.tar", b.getvalue()))
    assert ds.classes == ["caf\\xe9", "tea"]  # printable, and the same on every load


# ---- folders: links, special and unreadable files ----------------------------------------------

def test_link_loop_to_the_root_neither_repeats_nor_relabels(tmp_path):
    root = pets(tmp_path / "pets")
    os.symlink("..", root / "a" / "loop")
    with pytest.warns(DataWarning, match=r"skipped 1 folder link\(s\) .*: a/loop$"):
        ds = load_dataset(root)
    assert len(ds) == 6 and ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_link_to_another_class_does_not_take_its_images(tmp_path):
    root = pets(tmp_path / "pets")
    os.symlink("../b", root / "a" / "also-b")  # sorts before b: the walk meets b here first
    with pytest.warns(DataWarning, match=r"skipped 1 folder link\(s\) .*a/also-b"):
        ds = load_dataset(root)
    assert ds.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_second_link_to_one_class_is_skipped(tmp_path):
    root = pets(tmp_path / "pets")
    os.symlink("a", root / "c")
    with pytest.warns(DataWarning, match=r"skipped 1 folder link\(s\) .*: c$"):
        ds = load_dataset(root)
    assert ds.classes == ["a", "b"] and len(ds) == 6


def test_class_folders_that_are_links_are_read_and_their_edits_seen(tmp_path):
    store = pets(tmp_path / "store")
    root = tmp_path / "linked"
    root.mkdir()
    for c in ("a", "b"):
        os.symlink(store / c, root / c)
    os.symlink(store / "a", store / "b" / "back")  # a loop outside the folder, met through a link
    with pytest.warns(DataWarning, match="b/back"):
        first = load_dataset(root)
    assert first.classes == ["a", "b"] and first.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    write(store / "b" / "2.png", png(99))
    os.utime(store / "b" / "2.png", ns=(time.time_ns() + 10**9,) * 2)
    with pytest.warns(DataWarning, match="b/back"):
        assert load_dataset(root).images[-1, 0, 0, 0] == 99  # the cache saw the edit behind the link


@pytest.mark.parametrize("kind", ["zero-bytes", "dangling-link", "fifo", "bomb", "not-an-image"])
def test_unreadable_file_in_a_folder_is_a_counted_skip(tmp_path, kind):
    root = pets(tmp_path / "pets")
    bad = root / "b" / "bad.png"
    if kind == "zero-bytes":
        bad.write_bytes(b"")
    elif kind == "dangling-link":  # also what a file removed while the folder is read looks like
        os.symlink(root / "b" / "gone.png", bad)
    elif kind == "fifo":  # opening it to decode would wait for a writer forever
        os.mkfifo(bad)
    elif kind == "bomb":  # a PNG header claiming 100000 x 100000 pixels
        ihdr = b"IHDR" + (100000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big"))
    else:
        bad.write_bytes(b"GIF89a, or so it says")
    says = f"skipped 1 unreadable image(s) of 7 in {root}: {bad} (set data.strict=true to stop instead)"
    with pytest.warns(DataWarning, match=re.escape(says)):
        ds = load_dataset(root)
    assert len(ds) == 6
    with pytest.raises(DataError, match=re.escape(f"cannot decode image {bad}")):
        load_dataset(root, strict=True)


@pytest.mark.skipif(ROOT, reason="root reads files whatever their permissions")
def test_permission_denied(tmp_path):
    root = pets(tmp_path / "pets")
    (root / "a" / "0.png").chmod(0)
    says = f"skipped 1 unreadable image(s) of 6 in {root}: {root / 'a' / '0.png'}"
    with pytest.warns(DataWarning, match=re.escape(says)):
        load_dataset(root)
    (root / "b").chmod(0)
    try:
        with pytest.raises(DataError, match=re.escape(f"cannot list the folder {root / 'b'}")):
            load_dataset(root)
    finally:
        (root / "b").chmod(0o755)


def test_folder_without_images(tmp_path):
    write(tmp_path / "notes" / "readme.txt", b"x")
    write(tmp_path / "notes" / "a" / ".hidden.png", png(1))
    with pytest.raises(DataError, match=re.escape(f"no images in the folder {tmp_path / 'notes'} (extensions read")):
        load_dataset(tmp_path / "notes")


def test_folder_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "d"
    for name, v in ((b"caf\xe9", 1), (b"tea", 2)):
        d = os.path.join(os.fsencode(root), name)
        os.makedirs(d)
        with open(os.path.join(d, b"0.png"), "wb") as f:
            f.write(png(v))
    ds = load_dataset(root)
    assert ds.classes == ["caf\\xe9", "tea"] and ds.labels.tolist() == [0, 1]
    assert load_dataset(root).classes == ds.classes  # from the cache, the same names


# ---- EXIF orientation ---------------------------------------------------------------------------

def photo(path: Path, orientation: int | None, w: int = 32, h: int = 16) -> Path:
    """Stored w x h: left half black, right half white, with the EXIF orientation tag."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, w // 2:] = 255
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation, shape, dark", [
    (None, (16, 32), "left"), (1, (16, 32), "left"), (3, (16, 32), "right"),
    (6, (32, 16), "top"), (8, (32, 16), "bottom"),
])
def test_exif_orientation_is_applied(tmp_path, orientation, shape, dark):
    photo(tmp_path / "p" / "x.jpg", orientation)
    img = load_dataset(tmp_path / "p").images[0, 0].float()
    assert tuple(img.shape) == shape
    h, w = shape
    half = {"left": img[:, : w // 2], "right": img[:, w // 2:], "top": img[: h // 2], "bottom": img[h // 2:]}
    assert half[dark].mean() < 30 and img.mean() > 100


def test_sideways_photo_has_its_upright_size(tmp_path):
    """A phone photo stored 32x16 with orientation 6 is 16x32 like its upright neighbour; resizing
    happens after the rotation."""
    photo(tmp_path / "p" / "a.jpg", 6)
    photo(tmp_path / "p" / "b.jpg", None, 16, 32)
    assert load_dataset(tmp_path / "p").images.shape == (2, 3, 32, 16)
    ds = load_dataset(tmp_path / "p", image_size=8)
    assert ds.images.shape == (2, 3, 8, 8)


# ---- splits labelled by a label file --------------------------------------------------------

def tiny_imagenet(root: Path, annotations: str | None = None) -> Path:
    """Tiny ImageNet's layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG with
    val/val_annotations.txt, test/images/*.JPEG without labels."""
    for k, wnid in enumerate(("n01443537", "n01629819")):
        for i in range(2):
            write(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", jpeg(10 * k + i))
        write(root / "train" / wnid / f"{wnid}_boxes.txt", b"")
    truth = ["n01629819", "n01443537", "n01629819"]
    for i, wnid in enumerate(truth):
        write(root / "val" / "images" / f"val_{i}.JPEG", jpeg(100 + 20 * i))
        write(root / "test" / "images" / f"test_{i}.JPEG", jpeg(200))
    rows = "".join(f"val_{i}.JPEG\t{w}\t0\t0\t7\t7\n" for i, w in enumerate(truth))
    write(root / "val" / "val_annotations.txt", (annotations if annotations is not None else rows).encode())
    write(root / "wnids.txt", b"n01443537\nn01629819\n")
    return root


def as_tar(folder: Path) -> Path:
    path = folder.parent / f"{folder.name}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return path


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar"])
def test_tiny_imagenet_val_gets_its_labels(tmp_path, packed):
    root = tiny_imagenet(tmp_path / "tiny-imagenet-200")
    source = as_tar(root) if packed else root
    train, val, test = (load_dataset(source, s) for s in ("train", "val", "test"))
    assert train.classes == val.classes == ["n01443537", "n01629819"]
    assert val.labels.tolist() == [1, 0, 1]
    assert (val.images[:, 0, 0, 0].float() - torch.tensor([100.0, 120, 140])).abs().max() < 3
    assert test.labels is None and test.classes is None and len(test) == 3  # not a class "images"
    check_same_classes(train, val, "train", "val")
    with pytest.raises(DataError, match="^train is labelled but test is not"):
        check_same_classes(train, test, "train", "test")


IMAGENET_VAL = {"ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n09193705"}
LOC = "ImageId,PredictionString\n" + "".join(f"{k},{v} 1 2 3 4 {v} 5 6 7 8\n" for k, v in IMAGENET_VAL.items())


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar"])
@pytest.mark.parametrize("where", ["beside", "inside", "above-wrappers"])
def test_imagenet_val_with_loc_solution(tmp_path, where, packed):
    base = tmp_path / "imagenet"
    root = base / "ILSVRC" / "Data" / "CLS-LOC" if where == "above-wrappers" else base
    for k, wnid in enumerate(sorted(set(IMAGENET_VAL.values()))):
        write(root / "train" / wnid / f"{wnid}_1.JPEG", jpeg(k))
    for i, name in enumerate(IMAGENET_VAL):
        write(root / "val" / f"{name}.JPEG", jpeg(50 + i))
    folder = {"beside": root, "inside": root / "val", "above-wrappers": base}[where]
    write(folder / "LOC_val_solution.csv", LOC.encode())
    source = as_tar(base) if packed else base
    train, val = load_dataset(source), load_dataset(source, "val")
    assert val.classes == train.classes == ["n01751748", "n09193705"] and val.labels.tolist() == [0, 1]


@pytest.mark.parametrize("name, text", [
    ("val/labels.csv", "filename,label\nx0.png,dog\nx1.png,cat\n"),
    ("val/labels.txt", "x0.png dog\nimages/x1.png   cat\n"),
    ("val_labels.csv", "x0.png,dog\nx1.png,cat\n"),
    ("val/labels.csv", "\ufeffx0,dog\nx1,cat\n"),  # a BOM, and names without extension
])
def test_generic_label_files(tmp_path, name, text):
    root = pets(tmp_path / "pets", ("cat", "dog"), 1)
    (root / "train").mkdir()
    for c in ("cat", "dog"):
        (root / c).rename(root / "train" / c)
    write(root / "val" / "x0.png", png(70))
    write(root / "val" / "x1.png", png(71))
    write(root / name, text.encode())
    val = load_dataset(root, "val")
    assert val.classes == ["cat", "dog"] and val.labels.tolist() == [1, 0]


def test_flat_folder_with_labels_file(tmp_path):
    for i in range(3):
        write(tmp_path / "flat" / f"{i}.png", png(i))
    write(tmp_path / "flat" / "labels.txt", b"0.png z\n1.png y\n2.png z\n")
    ds = load_dataset(tmp_path / "flat")
    assert ds.classes == ["y", "z"] and ds.labels.tolist() == [1, 0, 1]


ANNOTATIONS = "val/val_annotations.txt"
BAD_LABEL_FILES = [
    # (id, val_annotations.txt text or a callable changing the folder, message after the label file)
    ("image-without-row", "val_0.JPEG\tn01629819\nval_1.JPEG\tn01443537\n",
     "has no row for 1 image(s) of split 'val' of {root}, the first being val_2.JPEG"),
    ("row-without-image",
     "val_0.JPEG\tn01629819\nval_1.JPEG\tn01443537\nval_2.JPEG\tn01629819\nval_9.JPEG\tn01629819\n",
     "lists 1 file(s) that are not images of split 'val' of {root}, the first being val_9.JPEG"),
    ("unknown-class", "val_0.JPEG\tn01629819\nval_1.JPEG\tn09999999\nval_2.JPEG\tn01629819\n",
     ("names 1 class(es) that are not class folders of {root} (e.g. 'n09999999'); its classes are "
      "n01443537, n01629819")),
    ("no-class", "val_0.JPEG\tn01629819\nval_1.JPEG\nval_2.JPEG\tn01629819\n",
     "line 2: expected a file name and a class, got 'val_1.JPEG'"),
    ("two-classes", "val_0.JPEG\tn01629819\nval_1.JPEG\tn01443537\nval_2.JPEG\tn01629819\nval_0.JPEG\tn01443537\n",
     "gives val_0.JPEG two classes: 'n01629819' (line 1) and 'n01443537' (line 4)"),
    ("empty", "", "lists no images"),
]


@pytest.mark.parametrize("text, says", [b[1:] for b in BAD_LABEL_FILES], ids=[b[0] for b in BAD_LABEL_FILES])
def test_bad_label_file(tmp_path, text, says):
    root = tiny_imagenet(tmp_path / "tiny", text)
    with pytest.raises(DataError) as e:
        load_dataset(root, "val")
    assert str(e.value) == f"label file {root / ANNOTATIONS} " + says.format(root=root)


def test_label_file_that_is_not_utf8(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny")
    (root / ANNOTATIONS).write_bytes(b"val_0.JPEG\tn\xe9\n")
    with pytest.raises(DataError, match=re.escape(f"label file {root / ANNOTATIONS} is not UTF-8 text")):
        load_dataset(root, "val")


def test_two_label_files_for_one_split(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny")
    write(root / "val_labels.csv", b"val_0.JPEG,n01629819\n")
    with pytest.raises(DataError, match=re.escape(f"{root} has 2 label files for val: ") + ".*val_annotations.txt"):
        load_dataset(root, "val")


# ---- check_same_classes -----------------------------------------------------------------------

def imageset(labels, classes):
    n = len(labels) if labels is not None else 2
    return ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
                    None if labels is None else torch.tensor(labels), classes)


DIFFER = "TEST and TRAIN have different class lists"


@pytest.mark.parametrize("train, test, says", [
    (imageset([0, 1, 2], list("abc")), imageset([0, 1], list("abc")), None),  # c has no test images
    (imageset(None, None), imageset(None, None), None),
    (imageset([0, 1, 2], None), imageset([2, 0], None), None),
    (imageset([0, 1], list("ab")), imageset([0, 2], list("abc")),
     f"{DIFFER}: TEST has class(es) 'c' that TRAIN lacks"),
    (imageset([0, 1, 2], list("abc")), imageset([0, 1], list("ab")), f"{DIFFER}: TEST lacks class(es) 'c' of TRAIN"),
    (imageset([0, 1], list("ab")), imageset([0, 1], list("ba")),
     f"{DIFFER}: they list the same classes in a different order"),
    (imageset(None, None), imageset([0, 1], list("ab")), "TEST is labelled but TRAIN is not"),
    (imageset([0, 1], list("ab")), imageset(None, None), "TRAIN is labelled but TEST is not"),
    (imageset([0, 0], list("ab")), imageset([0, 1], list("ab")),
     "TEST has images of 1 class(es) that TRAIN has no images of: 'b'"),
    (imageset([0, 1], None), imageset([0, 5], None), "TEST has images of 1 class(es) that TRAIN has no images of: '5'"),
    (imageset([0, 1], list("ab")), imageset([0, 7], list("ab")), "TEST has labels outside its 2 classes"),
])
def test_check_same_classes(train, test, says):
    if says is None:
        check_same_classes(train, test, "TRAIN", "TEST")
    else:
        with pytest.raises(DataError) as e:
            check_same_classes(train, test, "TRAIN", "TEST")
        assert str(e.value).startswith(says)


def test_check_same_classes_on_folders(tmp_path):
    """Classes come from the class folders of every split, so a class only the test split has
    is in both lists; what gives it away is that training has no images of it."""
    root = tmp_path / "pets"
    pets(root / "train", ("a", "b"), 1)
    pets(root / "test", ("a", "b", "c"), 1)
    train, test = load_dataset(root), load_dataset(root, "test")
    assert train.classes == test.classes == ["a", "b", "c"]
    with pytest.raises(DataError, match="test split has images of 1 class.*that the train split has no images of: 'c'"):
        check_same_classes(train, test, "the train split", "the test split")


# ---- settings and messages -----------------------------------------------------------------------

@pytest.mark.parametrize("size, says", [
    (0, "data.image_size must be a positive number of pixels, got 0"),
    (-3, "data.image_size must be a positive number of pixels, got -3"),
    (2.5, "data.image_size must be a whole number of pixels, got 2.5"),
    ("32", "data.image_size must be a whole number of pixels, got '32'"),
    (True, "data.image_size must be a whole number of pixels, got True"),
])
def test_bad_image_size(tmp_path, size, says):
    with pytest.raises(DataError, match=f"^{re.escape(says)}$"):
        load_dataset(pets(tmp_path / "pets"), image_size=size)


def test_sizes_differ_names_the_setting(tmp_path):
    root = pets(tmp_path / "pets")
    write(root / "b" / "big.png", png(1, 9, 9))
    with pytest.raises(DataError, match=r"b/big.png is 9x9 \(WxH\); set data.image_size=N to resize them"):
        load_dataset(root)


def test_empty_name():
    with pytest.raises(DataError, match="data.name is empty"):
        load_dataset("  ")


def test_unreadable_cache_entry_is_rebuilt(tmp_path):
    root = pets(tmp_path / "pets")
    first = load_dataset(root)
    for entry in (tmp_path / "cache" / "decoded").glob("*.npz"):
        entry.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(DataWarning, match="ignoring unreadable cache entry"):
        again = load_dataset(root)
    assert torch.equal(first.images, again.images)


# ---- the command line: one line naming the file, exit status 2 ---------------------------------

def pretrain(tmp_path, capsys, data: Path, *extra: str) -> str:
    from selfsup.cli import main

    rc = main(["pretrain", "--recipe", "quick_cifar10_rotation", "--run-dir", str(tmp_path / "run"),
               f"data.name={data}", "trainer.epochs=1", "trainer.batch_size=2", "trainer.device=cpu",
               "trainer.progress=false", "backbone.width=0.125", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("selfsup: error: "), err
    return err.strip()


def test_cli_damaged_archive(tmp_path, capsys):
    path = write(tmp_path / "pets.tar.gz", gzip.compress(overwrite(RAW, B0 + 10)))
    assert pretrain(tmp_path, capsys, path) == (f"selfsup: error: {path} is damaged: a member header that "
                                                f"cannot be read{AFTER_A2}")


def test_cli_folder_without_images(tmp_path, capsys):
    write(tmp_path / "docs" / "a" / "readme.md", b"#")
    assert f"no images in the folder {tmp_path / 'docs'}" in pretrain(tmp_path, capsys, tmp_path / "docs")


def test_cli_label_file_missing_an_image(tmp_path, capsys):
    root = tiny_imagenet(tmp_path / "tiny", BAD_LABEL_FILES[0][1])
    err = pretrain(tmp_path, capsys, root, "data.test_split=val")
    assert f"label file {root / ANNOTATIONS} has no row" in err and "val_2.JPEG" in err


def test_cli_sizes_differ(tmp_path, capsys):
    root = pets(tmp_path / "pets")
    write(root / "b" / "big.png", png(1, 9, 9))
    err = pretrain(tmp_path, capsys, root)
    assert f"{root / 'b' / 'big.png'} is 9x9" in err and "data.image_size=N" in err


def test_cli_garbage_after_the_archive(tmp_path, capsys):
    path = write(tmp_path / "pets.tar", RAW + b"trailing garbage")
    err = pretrain(tmp_path, capsys, path)
    assert err.startswith(f"selfsup: error: {path} is damaged: data that is not zero padding")
