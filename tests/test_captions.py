"""Image-caption data (selfsup/data/captions.py): the real Flickr8k-1k tar, each captions format
in a folder and in tars, the matching rules, splits by image, every bad input with its exact
outcome, the cache, and captions made from class names. Small files are real files written
here; the Flickr tar is decoded once per module."""

import csv
import gzip
import io
import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bad_files import png, tar_of, write
from conftest import SHARED_DATA
from selfsup.data import TEMPLATES, DataError, DataWarning, ImageSet, load_dataset, templated
from selfsup.data import folder as folder_mod

FLICKR = SHARED_DATA / "flickr8k-1k.tar.gz"


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


# Rows in file order; a's and c's captions are interleaved with others'.
ROWS = [("a.png", "a red square"), ("c.png", "blue one"), ("b.png", "green"),
        ("a.png", "a red box"), ("c.png", "blue two"), ("c.png", "blue three")]
TEXTS = [["a red square", "a red box"], ["green"], ["blue one", "blue two", "blue three"]]
IMAGES = {"images/a.png": png(10), "images/b.png": png(20), "images/c.png": png(30)}


def csv_bytes(rows, header=("image", "caption"), delimiter=",") -> bytes:
    b = io.StringIO()
    w = csv.writer(b, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return b.getvalue().encode()


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows).encode()


def coco_bytes(rows, prefix: str = "") -> bytes:
    names = list(dict.fromkeys(i for i, _ in rows))
    doc = {"images": [{"id": 100 + k, "file_name": prefix + n} for k, n in enumerate(names)],
           "annotations": [{"id": k, "image_id": 100 + names.index(i), "caption": c} for k, (i, c) in enumerate(rows)]}
    return json.dumps(doc).encode()


FORMATS = {"captions.txt": csv_bytes, "captions.jsonl": jsonl_bytes, "captions.json": coco_bytes}


def source(tmp_path: Path, files: dict[str, bytes], kind: str = "folder", name: str = "pics") -> Path:
    """`files` as a folder, a tar or a gzip tar (wrapped in a folder `name`, as tars usually are)."""
    if kind == "folder":
        for rel, data in files.items():
            write(tmp_path / name / rel, data)
        return tmp_path / name
    raw = tar_of({f"{name}/{rel}": data for rel, data in files.items()})
    path = tmp_path / (f"{name}.tar" if kind == "tar" else f"{name}.tar.gz")
    path.write_bytes(raw if kind == "tar" else gzip.compress(raw))
    return path


def values(ds: ImageSet) -> list[int]:
    return ds.images[:, 0, 0, 0].tolist()


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        yield


# ---- the real Flickr8k-1k tar ---------------------------------------------------------------

@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    """Loads from the Flickr tar with the module's own cache: the first decodes it (~2 s),
    the others are cache hits."""
    if not FLICKR.is_file():
        pytest.skip(f"Flickr8k-1k not found in {SHARED_DATA}")
    cache = tmp_path_factory.mktemp("flickr-cache")

    def load(split="all", **kw):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SELFSUP_CACHE", str(cache))
            return load_dataset(FLICKR, split, image_size=32, **kw)

    return load


def test_flickr_images_and_captions(flickr):
    ds = flickr("all")
    assert ds.images.shape == (1000, 3, 32, 32) and ds.labels is None and ds.name == "flickr8k-1k"
    assert len(ds.texts) == 1000 and all(len(t) == 5 for t in ds.texts)
    # The README's first image, its captions in file order.
    first = next(t for t in ds.texts if t[0].startswith("A child in a pink dress is climbing"))
    assert first[1:] == ["A girl going into a wooden building .", "A little girl climbing into a wooden playhouse .",
                         "A little girl climbing the stairs to her playhouse .",
                         "A little girl in a pink dress going into a wooden cabin ."]


def test_flickr_split_by_image(flickr):
    whole = flickr("all")
    train, test = flickr("train"), flickr("test")
    assert (len(train), len(test)) == (900, 100)
    pixels = lambda ds: {img.numpy().tobytes() for img in ds.images}  # noqa: E731
    captions = lambda ds: {tuple(t) for t in ds.texts}  # noqa: E731
    assert not pixels(train) & pixels(test) and not captions(train) & captions(test)
    assert pixels(train) | pixels(test) == pixels(whole) and captions(train) | captions(test) == captions(whole)
    again = flickr("test")
    assert torch.equal(again.images, test.images) and again.texts == test.texts
    other = flickr("test", seed=1)
    assert len(other) == 100 and captions(other) != captions(test)
    assert len(flickr("test", holdout=0.25)) == 250


# ---- formats, containers, matching ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "tar", "tgz"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats(tmp_path, fmt, kind):
    path = source(tmp_path, {**IMAGES, fmt: FORMATS[fmt](ROWS)}, kind)
    with no_warnings():
        ds = load_dataset(path, "all")
    assert values(ds) == [10, 20, 30] and ds.texts == TEXTS and ds.labels is None and ds.name == "pics"


def test_csv_dialects(tmp_path):
    """Tab- and |-separated with other column names (Flickr30k: image_name| comment_number| comment)."""
    rows = [(i, str(k), c) for k, (i, c) in enumerate(ROWS)]
    tab = source(tmp_path, {**IMAGES, "captions.csv": csv_bytes(rows, ("file_name", "n", "text"), "\t")}, name="t")
    pipe = source(tmp_path, {**IMAGES, "captions.txt": csv_bytes(rows, ("image_name", " comment_number", " comment"),
                                                                   "|")}, name="p")
    assert load_dataset(tab, "all").texts == TEXTS and load_dataset(pipe, "all").texts == TEXTS


def test_matching_rules(tmp_path):
    files = {"photos/2020/a.png": png(10), "photos/b.png": png(20), "meta/c.png": png(30),
             "meta/captions.jsonl": jsonl_bytes([("a.png", "base name"), ("../photos/b.png", "relative"),
                                                 ("c.png", "beside"), ("..\\photos\\2020\\a.png", "backslashes")])}
    ds = load_dataset(source(tmp_path, files, "tar"), "all")
    assert values(ds) == [30, 10, 20] and ds.texts == [["beside"], ["base name", "backslashes"], ["relative"]]
    # images/ beside the captions file comes before a base name elsewhere
    files = {"images/a.png": png(10), "old/a.png": png(99), "captions.txt": csv_bytes([("a.png", "x")])}
    with pytest.warns(DataWarning, match=r"skipped 1 image\(s\) of .* gives no caption: .*old/a.png"):
        assert values(load_dataset(source(tmp_path, files, name="beside"), "all")) == [10]
    files = {"x/a.png": png(10), "y/a.png": png(20), "captions.txt": csv_bytes([("a.png", "which?")])}
    with pytest.raises(DataError, match=r"captions file .*captions.txt line 2: image 'a.png' is neither beside it "
                                        r"nor in images/ beside it, and 2 images have its base name; give its path"):
        load_dataset(source(tmp_path, files, name="twice"), "all")


def test_split_folders(tmp_path):
    """A captions file per split folder; a base name is looked up in its own split only."""
    files = {"train/images/a.png": png(10), "train/images/b.png": png(20), "test/a.png": png(30),
             "train/captions.csv": csv_bytes([("a.png", "train a"), ("b.png", "train b")]),
             "test/captions.csv": csv_bytes([("a.png", "test a")])}
    path = source(tmp_path, files, "tar")
    with no_warnings():
        train, test = load_dataset(path, "train"), load_dataset(path, "test")
    assert values(train) == [10, 20] and train.texts == [["train a"], ["train b"]]
    assert values(test) == [30] and test.texts == [["test a"]]
    with pytest.raises(DataError, match=r"pics.tar has captions files for split\(s\) \['test', 'train'\] but "
                                        r"none for split 'val'"):
        load_dataset(path, "val")


def test_coco_split_files(tmp_path):
    """COCO's layout: annotations/captions_<split>2017.json beside train2017/ and val2017/."""
    files = {"train2017/000001.png": png(10), "train2017/000002.png": png(20), "val2017/000003.png": png(30),
             "annotations/captions_train2017.json": coco_bytes([("000001.png", "one"), ("000002.png", "two"),
                                                                ("000001.png", "uno")]),
             "annotations/captions_val2017.json": coco_bytes([("000003.png", "three")])}
    path = source(tmp_path, files, name="coco")
    with no_warnings():  # val2017's image is no train image without a caption
        train, val = load_dataset(path, "train"), load_dataset(path, "validation")
    assert values(train) == [10, 20] and train.texts == [["one", "uno"], ["two"]]
    assert values(val) == [30] and val.texts == [["three"]]
    with pytest.raises(DataError, match=r"coco has captions files for split\(s\) \['train', 'val'\] but none for "
                                        r"split 'test'"):
        load_dataset(path, "test")


def test_holdout_split(tmp_path):
    files = {f"images/{k}.png": png(k) for k in range(10)}
    path = source(tmp_path, {**files, "captions.txt": csv_bytes([(f"{k}.png", f"image {k}") for k in range(10)])})
    train, test = load_dataset(path, "train", holdout=0.3), load_dataset(path, "test", holdout=0.3)
    assert (len(train), len(test)) == (7, 3) and sorted(values(train) + values(test)) == list(range(10))
    assert [f"image {v}" for v in values(test)] == [t[0] for t in test.texts]  # captions travel with their images
    assert values(load_dataset(path, "test", holdout=0.3)) == values(test)
    draws = {tuple(values(load_dataset(path, "test", holdout=0.3, seed=s))) for s in range(5)}
    assert len(draws) > 1
    assert len(load_dataset(path, "all")) == 10 and len(load_dataset(path)) == 9  # default: holdout 0.1, train
    with pytest.raises(DataError, match=r"pics has no split folders, so its images are split by data.holdout into "
                                        r"'train' and 'test' \('all': every image\); load it with one of those "
                                        r"rather than 'val'"):
        load_dataset(path, "val")
    with pytest.raises(DataError, match=r"data.holdout=0.01 of the 10 images of .*pics leaves no test images"):
        load_dataset(path, "test", holdout=0.01)
    for bad in (0, 1, 1.5, "0.1", True, float("nan")):
        with pytest.raises(DataError, match="data.holdout must be a fraction between 0 and 1"):
            load_dataset(path, "test", holdout=bad)
    with pytest.raises(DataError, match="seed of the holdout split must be a whole number"):
        load_dataset(path, "test", seed=0.5)


# ---- bad input ---------------------------------------------------------------------------

def captioned(tmp_path, captions: dict[str, bytes], images=IMAGES, kind="folder") -> Path:
    return source(tmp_path, {**images, **captions}, kind)


def test_not_utf8(tmp_path):
    path = captioned(tmp_path, {"captions.txt": "image,caption\na.png,caf\xe9\n".encode("latin-1")}, kind="tar")
    with pytest.raises(DataError, match=r"captions file .*pics.tar:pics/captions.txt is not UTF-8 text "
                                        r"\(invalid continuation byte at byte 23\)"):
        load_dataset(path, "all")


@pytest.mark.parametrize("text, message", [
    ("file,label\na.png,x\n", r"its header 'file,label' has no caption column \(one of: caption, captions, text"),
    ("id,caption\na.png,x\n", r"its header 'id,caption' has no image column \(one of: image, imagename"),
    ("image,caption\na.png,x,y\n", r"line 2: 3 fields where its header has 2 \(a caption with an unquoted ','\?\)"),
    ("image,caption\n,x\n", r"line 2: the image name must be a non-empty string, got ''"),
    ("image,caption\n", r"lists no captions"),
    ("\n\n", r"is empty"),
])
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(DataError, match=r"captions file .*captions.txt:? ?" + message):
        load_dataset(captioned(tmp_path, {"captions.txt": text.encode()}), "all")


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.png", "caption": ', "line 2 is not JSON: Expecting value"),
    ('["a.png", "x"]', r"""line 2: expected an object with "image" and "caption", got \['a.png', 'x'\]"""),
    ('{"image": "a.png", "text": "x"}', r"""line 2: expected an object with "image" and "caption", got"""),
    ('{"image": "a.png", "caption": 7}', r"line 2: the caption must be a string, got 7"),
    ('{"image": ["a.png"], "caption": "x"}', r"line 2: the image name must be a non-empty string"),
])
def test_bad_jsonl(tmp_path, line, message):
    text = '{"image": "a.png", "caption": "fine"}\n' + line + "\n"
    with pytest.raises(DataError, match=r"captions file .*captions.jsonl " + message):
        load_dataset(captioned(tmp_path, {"captions.jsonl": text.encode()}), "all")


@pytest.mark.parametrize("doc, message", [
    ([], r"expected an object with \"images\" and \"annotations\", got list"),
    ({"annotations": []}, r'has no "images" list'),
    ({"images": [], "annotations": {}}, r'has no "annotations" list'),
    ({"images": [{"id": 1}], "annotations": []}, r'images\[0\] has no "file_name"'),
    ({"images": [{"file_name": "a.png"}], "annotations": []}, r'images\[0\] has no "id"'),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]},
     r'annotations\[0\] has no "caption"'),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"caption": "x"}]},
     r'annotations\[0\] has no "image_id"'),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2, "caption": "x"}]},
     r"annotations\[0\] is of image id 2, which its images list lacks"),
    ({"images": [{"id": [1], "file_name": "a.png"}], "annotations": []},
     r'images\[0\]\["id"\] must be a number or a string'),
])
def test_bad_coco(tmp_path, doc, message):
    path = captioned(tmp_path, {"annotations/captions_train2017.json": json.dumps(doc).encode()})
    with pytest.raises(DataError, match=r"COCO captions file .*captions_train2017.json:? " + message):
        load_dataset(path, "train")
    (path / "annotations" / "captions_train2017.json").write_text("{nope")
    with pytest.raises(DataError, match=r"captions file .*captions_train2017.json is not JSON: .*\(line 1\)"):
        load_dataset(path, "train")


def test_missing_image(tmp_path):
    rows = [*ROWS, ("gone.png", "x"), ("also-gone.png", "y"), ("gone.png", "z")]
    with pytest.raises(DataError, match=r"captions file .*pics.tar:pics/captions.txt names 2 image\(s\) that "
                                        r".*pics.tar does not have, the first being 'gone.png' \(line 8\)"):
        load_dataset(captioned(tmp_path, {"captions.txt": csv_bytes(rows)}, kind="tar"), "all")


def test_image_without_caption_is_skipped(tmp_path):
    images = {**IMAGES, "images/d.png": png(40), "images/e.png": png(50)}
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS)}, images)
    with pytest.warns(DataWarning, match=r"skipped 2 image\(s\) of .*pics that .*captions.txt gives no caption: "
                                         r".*images/d.png, .*images/e.png$"):
        ds = load_dataset(path, "all")
    assert values(ds) == [10, 20, 30]


def test_empty_caption_is_skipped(tmp_path):
    """An empty caption is dropped, the image keeps its others; one left with none is an image
    without a caption."""
    rows = [*ROWS, ("b.png", "   "), ("a.png", "")]
    path = captioned(tmp_path, {"captions.txt": csv_bytes(rows)})
    with pytest.warns(DataWarning, match=r"captions.txt: skipped 2 empty caption\(s\), the first at line 8"):
        assert load_dataset(path, "all").texts == TEXTS
    rows = [("a.png", "x"), ("b.png", " "), ("c.png", "y")]
    (path / "captions.txt").write_bytes(csv_bytes(rows))
    with pytest.warns(DataWarning) as got:
        ds = load_dataset(path, "all")
    assert values(ds) == [10, 30] and ds.texts == [["x"], ["y"]]
    assert {str(w.message).split(":")[1].strip() for w in got} >= {"skipped 1 empty caption(s), the first at line 3"}
    assert any("skipped 1 image(s)" in str(w.message) and "b.png" in str(w.message) for w in got)
    (path / "captions.txt").write_bytes(csv_bytes([("a.png", " ")]))
    with pytest.raises(DataError, match="captions.txt gives no image a caption that is not empty"):
        load_dataset(path, "all")


def test_undecodable_images(tmp_path):
    images = {**IMAGES, "images/b.png": b"\x89PNG not really", "images/c.png": png(30)[:40]}
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS)}, images, kind="tar")
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable image\(s\) of 3 in .*pics.tar: "
                                         r".*pics/images/b.png, .*pics/images/c.png \(set data.strict=true"):
        ds = load_dataset(path, "all")
    assert values(ds) == [10] and ds.texts == [TEXTS[0]]
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable"):
        load_dataset(path, "all")  # from the cache, still warns
    with pytest.raises(DataError, match=r"cannot decode image .*pics.tar:pics/images/b.png"):
        load_dataset(path, "all", strict=True)  # an entry with skipped files never satisfies strict


def test_two_captions_files(tmp_path):
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS), "more/captions.jsonl": jsonl_bytes(ROWS)})
    with pytest.raises(DataError, match=r"pics has 2 captions files: .*pics/captions.txt, "
                                        r".*pics/more/captions.jsonl; keep one"):
        load_dataset(path, "all")
    path = source(tmp_path, {"train/a.png": png(1), "train/captions.txt": csv_bytes([("a.png", "x")]),
                             "train/more/captions.csv": csv_bytes([("a.png", "y")])}, name="two")
    with pytest.raises(DataError, match=r"two has 2 captions files for split 'train': .*train/captions.txt, "
                                        r".*train/more/captions.csv; keep one"):
        load_dataset(path, "train")
    path = source(tmp_path, {"train/a.png": png(1), "train/captions.txt": csv_bytes([("a.png", "x")]),
                             "captions.txt": csv_bytes([("a.png", "y")])}, name="mixed")
    with pytest.raises(DataError, match=r"mixed has captions files both in split folders and outside them"):
        load_dataset(path, "train")


def test_sizes_differ(tmp_path):
    images = {"images/a.png": png(10, 8, 8), "images/b.png": png(20, 12, 8), "images/c.png": png(30)}
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS)}, images)
    with pytest.raises(DataError, match=r"images in .*pics differ in size: .*a.png is 8x8, .*b.png is 12x8 "
                                        r"\(WxH\); set data.image_size=N"):
        load_dataset(path, "all")
    assert load_dataset(path, "all", image_size=4).images.shape == (3, 3, 4, 4)


def test_no_images(tmp_path):
    path = source(tmp_path, {"captions.txt": csv_bytes(ROWS), "readme.md": b"x"})
    with pytest.raises(DataError, match=r"no images in .*pics \(extensions read"):
        load_dataset(path, "all")


# ---- routing, cache, one read ---------------------------------------------------------------

def test_cache_holds_captions_and_tracks_them(tmp_path, monkeypatch):
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS)})
    first = load_dataset(path, "all")
    entries = list((tmp_path / "cache" / "decoded").glob("pics-captions-all-*.npz"))
    assert len(entries) == 1
    calls = []
    real = folder_mod.decode
    monkeypatch.setattr(folder_mod, "decode", lambda *a: calls.append(1) or real(*a))
    again, train = load_dataset(path, "all"), load_dataset(path, "train", holdout=0.34)
    assert calls == [] and again.texts == TEXTS and torch.equal(again.images, first.images) and len(train) == 2
    # an edit of the captions file alone is a new entry
    (path / "captions.txt").write_bytes(csv_bytes([("a.png", "changed"), *ROWS[1:]]))
    os.utime(path / "captions.txt", ns=(time.time_ns() + 10**9,) * 2)
    assert load_dataset(path, "all").texts[0] == ["changed", "a red box"] and len(calls) == 3
    # texts that are not plain ASCII survive the entry
    (path / "captions.txt").write_bytes(csv_bytes([("a.png", "ein Würfel 🎲"), *ROWS[1:]]))
    os.utime(path / "captions.txt", ns=(time.time_ns() + 2 * 10**9,) * 2)
    load_dataset(path, "all")
    assert load_dataset(path, "all").texts[0] == ["ein Würfel 🎲", "a red box"] and len(calls) == 6
    # warnings given when the entry was made are given again on a hit
    write(path / "images" / "d.png", png(40))
    for _ in range(2):
        with pytest.warns(DataWarning, match=r"skipped 1 image\(s\) .*d.png"):
            load_dataset(path, "all")


def test_tar_is_read_once(tmp_path, monkeypatch):
    reads = []
    real = folder_mod.read_tar
    monkeypatch.setattr(folder_mod, "read_tar", lambda *a: reads.append(1) or real(*a))
    path = captioned(tmp_path, {"captions.txt": csv_bytes(ROWS)}, kind="tgz")
    load_dataset(path, "train", holdout=0.34)
    assert len(reads) == 1
    test = load_dataset(path, "test", holdout=0.34)
    load_dataset(path, "all")
    assert len(reads) == 1 and len(test) == 1
    plain = source(tmp_path, {"cat/a.png": png(1), "dog/b.png": png(2)}, "tar", name="plain")
    ds = load_dataset(plain)
    assert len(reads) == 2 and ds.texts is None and ds.classes == ["cat", "dog"]
    load_dataset(plain)
    assert len(reads) == 2
    load_dataset(path, "train", cache=False)
    assert len(reads) == 3


def test_folders_without_captions_are_image_folders(tmp_path):
    path = source(tmp_path, {"cat/a.png": png(1), "dog/b.png": png(2), "notes.txt": b"captions?"})
    ds = load_dataset(path)
    assert ds.texts is None and ds.labels.tolist() == [0, 1] and ds.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="holds one set; load it with split='train' rather than 'test'"):
        load_dataset(path, "test")


# ---- captions from class names --------------------------------------------------------------

def test_templated_digits():
    digits = load_dataset("digits")
    ds = templated(digits, None)
    assert ds.images is digits.images and torch.equal(ds.labels, digits.labels) and len(ds.texts) == len(digits)
    k = int(digits.labels[0])
    assert ds.texts[0] == [t.replace("{}", str(k)) for t in TEMPLATES] and ds.texts[0][0] == f"a photo of a {k}."
    assert templated(digits, []).texts == ds.texts
    mine = templated(digits, ["a handwritten {}", "the digit {}!"])
    assert all(t == [f"a handwritten {c}", f"the digit {c}!"] for t, c in zip(mine.texts, digits.labels.tolist()))
    sub = ds.subset([3, 1])
    assert sub.texts == [ds.texts[3], ds.texts[1]]


def test_templated_refusals():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    named = templated(ImageSet(images, torch.tensor([1, 0]), ["golden_retriever", "cat"]), ["a {}."])
    assert named.texts == [["a cat."], ["a golden retriever."]]
    with pytest.raises(DataError, match="ImageSet 'pics' has no labels, so no captions can be made"):
        templated(ImageSet(images, name="pics"))
    with pytest.raises(DataError, match="ImageSet 'ids' has no class names"):
        templated(ImageSet(images, torch.tensor([0, 1]), name="ids"))
    with pytest.raises(DataError, match=r"caption template 'a photo' must hold one \{\} for the class name"):
        templated(named, ["a photo"])
    with pytest.raises(DataError, match="has labels outside its 2 class names"):
        templated(ImageSet(images, torch.tensor([0, 2]), ["a", "b"]))
