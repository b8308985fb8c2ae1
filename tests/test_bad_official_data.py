"""The catalogue of bad data in the official formats: damaged CIFAR and STL-10 archives, malformed
CIFAR pickles (never run), STL-10 binaries, .npz and idx files. Each ends in a DataError whose
one line names the file (and member or array); never a traceback, never a quietly different
dataset. Image folders, tars of them and label files: tests/test_bad_data.py."""

import gzip
import io
import pickle
import re
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from bad_files import overwrite, tar_of, write
from selfsup.data import DataError, load_dataset
from selfsup.data import download as dl


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


# ---- official archives (CIFAR, STL-10): read to the end, damage refused ---------------------------


def tar_offsets(files: dict[str, bytes]) -> tuple[bytes, dict[str, int]]:
    """An uncompressed tar of `files` and the offset of each member's header."""
    b, at = io.BytesIO(), {}
    with tarfile.open(fileobj=b, mode="w") as tf:
        for name, data in files.items():
            at[name] = tf.offset
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return b.getvalue(), at


def cifar_batch(n: int = 2, **change) -> dict:
    """An official CIFAR-10 batch: bytes keys, data uint8 [N, 3072], labels a list of ints."""
    d = {b"data": np.arange(n * 3072, dtype=np.uint64).astype(np.uint8).reshape(n, 3072),
         b"labels": list(range(n)), b"batch_label": b"testing batch 1 of 1"}
    d.update({k.encode(): v for k, v in change.items()})
    return {k: v for k, v in d.items() if v is not None}


def cifar_files(test_batch=None, meta=None) -> dict[str, bytes]:
    """cifar-10-python.tar.gz's members, protocol-2 pickles as the official ones are."""
    dump = lambda obj: obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)  # noqa: E731
    files = {"cifar-10-batches-py/batches.meta": dump(
        {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072} if meta is None else meta)}
    files["cifar-10-batches-py/test_batch"] = dump(cifar_batch() if test_batch is None else test_batch)
    files.update({f"cifar-10-batches-py/data_batch_{i}": dump(cifar_batch()) for i in range(1, 6)})
    return files


STL_PIXELS = 3 * 96 * 96


def stl_files(change: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """stl10_binary.tar.gz's members, two images a split; `change` replaces some by base name."""
    files = {"stl10_binary/class_names.txt": "".join(f"k{i}\n" for i in range(10)).encode()}
    for split in ("test", "train", "unlabeled"):
        files[f"stl10_binary/{split}_X.bin"] = bytes(range(256)) * (2 * STL_PIXELS // 256)
        if split != "unlabeled":
            files[f"stl10_binary/{split}_y.bin"] = bytes([1, 10])
    files.update({f"stl10_binary/{name}": data for name, data in (change or {}).items()})
    return files


def official(tmp_path, kind: str, damage: str | None = None) -> tuple[Path, str]:
    """A real official archive, intact or damaged: its path, and the tar it compresses."""
    files, name = (cifar_files(), "cifar-10-python.tar.gz") if kind == "cifar" else \
        (stl_files(), "stl10_binary.tar.gz")
    raw, at = tar_offsets(files)
    # The test split's members come first, so all it needs reads well before the damage.
    if damage == "header":  # the last member's header
        raw = overwrite(raw, at[list(files)[-1]] + 10)
    gz = gzip.compress(raw, mtime=0)
    if damage == "crc":  # the gzip trailer (CRC and length), as a bad copy leaves it
        gz = gz[:-8] + bytes(8)
    return write(tmp_path / name, gz), raw


@pytest.mark.parametrize("kind", ["cifar", "stl10"])
@pytest.mark.parametrize("damage", [None, "crc", "header"])
def test_damaged_official_archive_is_an_error_naming_it(tmp_path, kind, damage):
    path, raw = official(tmp_path, kind, damage)
    members = list(cifar_files() if kind == "cifar" else stl_files())
    if damage is None:
        ds = load_dataset(path, "test")
        assert len(ds) == 2 and ds.labels.tolist() == ([0, 1] if kind == "cifar" else [0, 9])
        return
    with pytest.raises(DataError) as e:
        load_dataset(path, "test")
    says = (f"CRC check failed 0x0 != 0x{zlib.crc32(raw):x}, after member '{members[-1]}'" if damage == "crc"
            else f"a member header that cannot be read, after member '{members[-2]}'")
    assert str(e.value) == f"{path} is damaged: {says}"


@pytest.mark.parametrize("damage", [None, "crc", "header"])
def test_extracting_a_damaged_archive_writes_nothing(tmp_path, damage):
    path, _ = official(tmp_path, "stl10", damage)
    out = tmp_path / "out"
    if damage is None:
        dl.extract_members(path, out, {"test_X.bin", "class_names.txt"})
        assert sorted(p.name for p in out.iterdir()) == ["class_names.txt", "test_X.bin"]
        return
    with pytest.raises(DataError, match=f"^{re.escape(str(path))} is damaged: "):
        dl.extract_members(path, out, {"test_X.bin", "class_names.txt"})
    assert not out.exists()


# ---- CIFAR pickles ---------------------------------------------------------------------------------

BATCH = "cifar-10-batches-py/test_batch"
META = "cifar-10-batches-py/batches.meta"
PICKLE = "cannot read the CIFAR pickle {w}: "
BAD_CIFAR = [
    # (id, test_batch, batches.meta, member, message, where {w} is "<archive>:<member>"; a message
    # ending in ": " is followed by numpy's or pickle's own words)
    ("labels-strings", cifar_batch(labels=["x", "y"]), None, BATCH,
     "{w}: 'labels' should be a list of integers, got <U1 [2]"),
    ("labels-floats", cifar_batch(labels=[0.0, 1.7]), None, BATCH,
     "{w}: 'labels' should be a list of integers, got float64 [2]"),
    ("labels-huge", cifar_batch(labels=[0, 2**70]), None, BATCH,
     "{w}: 'labels' should be a list of integers, got object [2]"),
    ("labels-count", cifar_batch(labels=[0, 1, 2]), None, BATCH, "{w}: 3 labels for 2 images"),
    ("labels-range", cifar_batch(labels=[0, 10]), None, BATCH,
     "{w}: labels must be 0..9 (the 10 classes of batches.meta), found 0..10"),
    ("labels-negative", cifar_batch(labels=[-1, 0]), None, BATCH,
     "{w}: labels must be 0..9 (the 10 classes of batches.meta), found -1..0"),
    ("no-labels", cifar_batch(labels=None), None, BATCH, "{w}: missing key 'labels' (keys: data, batch_label)"),
    ("no-data", cifar_batch(data=None), None, BATCH, "{w}: missing key 'data' (keys: labels, batch_label)"),
    ("data-shape", cifar_batch(data=np.zeros((2, 3000), np.uint8)), None, BATCH,
     "{w}: 'data' should be uint8 [N, 3072], got uint8 [2, 3000]"),
    ("data-int64", cifar_batch(data=np.zeros((2, 3072), np.int64)), None, BATCH,
     "{w}: 'data' should be uint8 [N, 3072], got int64 [2, 3072]"),
    ("data-ragged", cifar_batch(data=[[0] * 3072, [0]]), None, BATCH, "{w}: 'data' is not an array: "),
    ("data-empty", cifar_batch(data=np.zeros((0, 3072), np.uint8), labels=[]), None, BATCH,
     "{w}: 'data' holds no images"),
    ("not-a-dict", [1, 2], None, BATCH, "{w}: expected a pickled dict, got list"),
    ("cut-short", pickle.dumps(cifar_batch(), protocol=2)[:-100], None, BATCH, PICKLE),
    ("runs-code", pickle.dumps(print, protocol=2), None, BATCH,
     PICKLE + "refusing to load __builtin__.print from a dataset pickle"),
    ("other-codec", b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", None,
     BATCH, PICKLE + "refusing to encode with 'rot13' in a dataset pickle"),
    ("bytes-bomb", b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.", None, BATCH,
     PICKLE + "refusing to call bytes() with arguments in a dataset pickle"),
    ("names-missing", None, {b"num_vis": 3072}, META, "{w}: missing key 'label_names' (keys: num_vis)"),
    ("names-bytes", None, {b"label_names": b"airplane"}, META,
     "{w}: 'label_names' should be a non-empty list of names, got bytes"),
    ("names-not-utf8", None, {b"label_names": [b"caf\xe9"] * 10}, META,
     "{w}: class name b'caf\\xe9' in 'label_names' is not UTF-8"),
    ("names-numbers", None, {b"label_names": list(range(10))}, META,
     "{w}: 'label_names' should hold names, found int 0"),
]


@pytest.mark.parametrize("batch, meta, member, says", [b[1:] for b in BAD_CIFAR], ids=[b[0] for b in BAD_CIFAR])
def test_malformed_cifar_pickle_names_archive_and_member(tmp_path, batch, meta, member, says):
    """Every part of a batch is checked before it is cast, and a pickle still never runs code."""
    path = write(tmp_path / "cifar-10-python.tar.gz", gzip.compress(tar_of(cifar_files(batch, meta))))
    with pytest.raises(DataError) as e:
        load_dataset(path, "test")
    msg, says = str(e.value), says.format(w=f"{path}:{member}")
    assert (msg.startswith(says) and "\n" not in msg) if says.endswith(": ") else msg == says


def test_cifar_member_twice(tmp_path):
    files = cifar_files()
    files["copy/cifar-10-batches-py/test_batch"] = files[BATCH]
    path = write(tmp_path / "cifar-10-python.tar.gz", gzip.compress(tar_of(files)))
    with pytest.raises(DataError, match=f"^{re.escape(f'{path} holds test_batch twice: {path}:{BATCH} and ')}"):
        load_dataset(path, "test")


# ---- STL-10 binaries ---------------------------------------------------------------------------

BAD_STL = [
    # (id, changed members, member, message after "<archive>:stl10_binary/<member>" or its path)
    ("names-not-utf8", {"class_names.txt": b"airplane\nbird\xff\n"}, "class_names.txt",
     " is not UTF-8 text (byte 13: b'\\xff')"),
    ("names-count", {"class_names.txt": b"a\nb\nc\n"}, "class_names.txt",
     " names 3 classes; STL-10 has 10, one name a line"),
    ("x-cut", {"test_X.bin": bytes(2 * STL_PIXELS - 5)}, "test_X.bin",
     f": {2 * STL_PIXELS - 5} bytes is not a whole number of 3x96x96 images ({STL_PIXELS} bytes each); truncated?"),
    ("x-empty", {"test_X.bin": b""}, "test_X.bin",
     f": 0 bytes is not a whole number of 3x96x96 images ({STL_PIXELS} bytes each); truncated?"),
    ("y-zero", {"test_y.bin": bytes([0, 3])}, "test_y.bin", ": labels must be 1..10, found 0..3"),
    ("y-eleven", {"test_y.bin": bytes([1, 11])}, "test_y.bin", ": labels must be 1..10, found 1..11"),
    ("y-count", {"test_y.bin": bytes([1, 2, 3])}, "test_y.bin", ": 3 labels for 2 images"),
]


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize("change, member, says", [b[1:] for b in BAD_STL], ids=[b[0] for b in BAD_STL])
def test_malformed_stl10_file_is_named(tmp_path, packed, change, member, says):
    files = stl_files(change)
    if packed:
        path = write(tmp_path / "stl10_binary.tar.gz", gzip.compress(tar_of(files)))
        where = f"{path}:stl10_binary/{member}"
    else:
        for name, data in files.items():
            write(tmp_path / name, data)
        path, where = tmp_path / "stl10_binary", tmp_path / "stl10_binary" / member
    with pytest.raises(DataError) as e:
        load_dataset(path, "test")
    assert str(e.value) == f"{where}{says}"


def test_stl10_member_twice(tmp_path):
    files = stl_files()
    files["old/test_X.bin"] = bytes(STL_PIXELS)
    path = write(tmp_path / "stl10_binary.tar.gz", gzip.compress(tar_of(files)))
    with pytest.raises(DataError) as e:
        load_dataset(path, "test")
    assert str(e.value) == f"{path} holds test_X.bin twice: {path}:stl10_binary/test_X.bin and {path}:old/test_X.bin"


# ---- .npz -------------------------------------------------------------------------------------

IMAGES = np.full((2, 4, 4, 3), 7, np.uint8)


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def flip_in_images(path: Path) -> None:
    npz(path, images=IMAGES, labels=np.arange(2))
    data = path.read_bytes()
    at = data.index(b"\x07" * IMAGES.size)  # stored, not deflated: the pixels are in the file as is
    path.write_bytes(data[:at] + b"\x06" + data[at + 1:])


NOT_NPZ = "{path} is not an .npz (a zip of .npy arrays, as numpy.savez writes): it starts with "
CLASSES_OF = "one for each name in {path}['classes']"
BAD_NPZ = [
    # (id, write(path), message, where {path} is the file)
    ("empty", lambda p: p.write_bytes(b""), "cannot read {path} as an .npz: it is empty (0 bytes)"),
    ("flipped-byte", flip_in_images, "cannot read {path}['images']: Bad CRC-32 for file 'images.npy'"),
    ("an-npy", lambda p: p.write_bytes(b"\x93NUMPY" + bytes(64)), NOT_NPZ + "b'\\x93NUM', as an .npy does"),
    ("text", lambda p: p.write_bytes(b"hello"), NOT_NPZ + "b'hell'"),
    ("cut-zip", lambda p: p.write_bytes(npz(p, images=IMAGES).read_bytes()[:-30]),
     "cannot read {path} as an .npz: File is not a zip file"),
    ("objects", lambda p: npz(p, images=np.array([None, 1], dtype=object)),
     "cannot read {path}['images']: Object arrays cannot be loaded when allow_pickle=False"),
    ("empty-dimension", lambda p: npz(p, images=np.zeros((2, 0, 4, 3), np.uint8)),
     "{path}['images'] has an empty dimension: shape [2, 0, 4, 3]"),
    ("no-images", lambda p: npz(p, images=np.zeros((0, 4, 4, 3), np.uint8)),
     "{path}['images'] holds no images: shape [0, 4, 4, 3]"),
    ("sparse-label", lambda p: npz(p, images=IMAGES, labels=np.array([0, 2**40])),
     "{path}['labels']: label 1099511627776 for 2 images; without a 'classes' array labels must be below "
     "max(N, 1000), so save the class names as 'classes' to declare more classes"),
    ("negative-label", lambda p: npz(p, images=IMAGES, labels=np.array([-1, 0])),
     "{path}['labels']: negative label -1"),
    ("uint64-label", lambda p: npz(p, images=IMAGES, labels=np.array([0, 2**63], np.uint64)),
     "{path}['labels']: label 9223372036854775808 is no class index"),
    ("classes-0d", lambda p: npz(p, images=IMAGES, labels=np.arange(2), classes=np.array("ab")),
     "{path}['classes']: classes must be a 1-d array of names, got <U2 []"),
    ("classes-twice", lambda p: npz(p, images=IMAGES, labels=np.arange(2), classes=np.array(["a", "a"])),
     "{path}['classes']: class 'a' is listed twice"),
    ("classes-too-few", lambda p: npz(p, images=IMAGES, labels=np.arange(2), classes=np.array(["a"])),
     "{path}['labels']: labels must be 0..0, " + CLASSES_OF + ", found 0..1"),
    ("classes-too-many", lambda p: npz(p, images=IMAGES, labels=np.arange(2), classes=np.array(list("abc"))),
     "{path}['classes'] lists 3 classes but the labels of the file (labels) reach only 2: "
     "classes 'c' and after have no images"),
    ("other-split-beyond", lambda p: npz(p, x_train=IMAGES, y_train=np.arange(2), x_test=IMAGES,
                                         y_test=np.array([0, 2]), classes=np.array(list("ab"))),
     "{path}['y_test']: labels must be 0..1, " + CLASSES_OF + ", found 0..2"),
]


@pytest.mark.parametrize("build, says", [b[1:] for b in BAD_NPZ], ids=[b[0] for b in BAD_NPZ])
def test_bad_npz_names_file_and_key(tmp_path, build, says):
    path = tmp_path / "d.npz"
    build(path)
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert str(e.value) == says.format(path=path)


def test_npz_classes_are_checked_against_every_split(tmp_path):
    """One `classes` serves every split: the test split's labels reach the last class, so the
    training split, which lacks it, still has all three names; numbers are names too."""
    path = npz(tmp_path / "s.npz", x_train=IMAGES, y_train=np.arange(2), x_test=IMAGES, y_test=np.array([2, 2]),
               classes=np.array([b"a", b"b", b"c"]))
    assert load_dataset(path).classes == ["a", "b", "c"] and load_dataset(path, "test").num_classes == 3
    path = npz(tmp_path / "n.npz", images=IMAGES, labels=np.array([0, 999]))  # within max(N, 1000)
    assert load_dataset(path).num_classes == 1000
    path = npz(tmp_path / "k.npz", images=IMAGES, labels=np.array([1, 0]), classes=np.array([3, 8]))
    assert load_dataset(path).classes == ["3", "8"]


# ---- idx --------------------------------------------------------------------------------------

def idx(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int8: 0x09, np.int32: 0x0C}[arr.dtype.type]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def idx_pair(folder: Path, labels: np.ndarray, n: int | None = None, stem: str = "train", gz: bool = False):
    """An images file of n 4x4 images and its labels file beside it; the images file's path."""
    n = len(labels) if n is None else n
    suffix = ".gz" if gz else ""
    pack = (lambda b: gzip.compress(b, mtime=0)) if gz else (lambda b: b)
    write(folder / f"{stem}-labels-idx1-ubyte{suffix}", pack(idx(labels)))
    return write(folder / f"{stem}-images-idx3-ubyte{suffix}", pack(idx(np.full((n, 4, 4), 9, np.uint8))))


LABELS = "{d}/train-labels-idx1-ubyte"
FAMILY = "(an idx file named as MNIST's has 10 classes)"
BAD_IDX = [
    # (id, write(folder) -> the images file, message, where {d} is the folder)
    ("label-200", lambda d: idx_pair(d, np.array([0, 200], np.uint8)),
     LABELS + f": labels must be 0..9 {FAMILY}, found 0..200"),
    ("negative", lambda d: idx_pair(d, np.array([-1, 3], np.int8)),
     LABELS + f": labels must be 0..9 {FAMILY}, found -1..3"),
    ("generic-sparse", lambda d: idx_pair(d, np.array([0, 5000], np.int32), stem="letters-train"),
     "{d}/letters-train-labels-idx1-ubyte: labels must be 0..999 (a generic idx set may have up to max(N, 1000) "
     "classes), found 0..5000"),
    ("no-images", lambda d: idx_pair(d, np.zeros(0, np.uint8)),
     "{d}/train-images-idx3-ubyte holds no images: its header says [0, 4, 4]"),
    ("count", lambda d: idx_pair(d, np.arange(3, dtype=np.uint8), n=2),
     LABELS + " has 3 labels but {d}/train-images-idx3-ubyte has 2 images"),
    ("gz-crc", lambda d: write(d / "train-images-idx3-ubyte.gz",
                               gzip.compress(idx(np.zeros((2, 4, 4), np.uint8)), mtime=0)[:-8] + bytes(8)),
     "cannot decompress {d}/train-images-idx3-ubyte.gz: CRC check failed (truncated download?)"),
    ("magic", lambda d: write(d / "train-images-idx3-ubyte", b"PK\x03\x04" + bytes(40)),
     "{d}/train-images-idx3-ubyte is not an idx file: magic bytes 504b0304, expected 0000 then a type code "
     "(08 ubyte, 09 byte, 0b short, 0c int, 0d float, 0e double) and the number of dimensions"),
]


@pytest.mark.parametrize("build, says", [b[1:] for b in BAD_IDX], ids=[b[0] for b in BAD_IDX])
def test_bad_idx_names_the_file(tmp_path, build, says):
    path = build(tmp_path / "digits")
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert str(e.value) == says.format(d=tmp_path / "digits")


def test_idx_class_rules(tmp_path):
    """A named dataset's classes bound its labels; a generic idx set may have up to max(N, 1000)."""
    idx_pair(tmp_path / "mnist", np.array([3, 10], np.uint8), gz=True)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=tmp_path)
    assert str(e.value) == (LABELS.format(d=tmp_path / "mnist") + ".gz: labels must be 0..9 (the 10 classes "
                            "of mnist), found 3..10")
    ds = load_dataset(idx_pair(tmp_path / "emnist", np.array([1, 200], np.uint8), stem="letters-train"))
    assert ds.num_classes == 201 and ds.classes is None
