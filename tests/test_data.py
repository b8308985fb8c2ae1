"""selfsup.data: every reader on files written here in the official formats, bad inputs, the
cache, and the project's shared real data when it is present."""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import DataError, DataWarning, ImageSet, data_root, dataset_stats, load_dataset
from selfsup.data import download as dl
from selfsup.data import folder as folder_mod
from selfsup.data.idx import read_idx

SHARED = Path(os.environ.get("SELFSUP_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads the user's data root or writes the home cache."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "no-data"))


def rand_images(n, c=3, h=32, w=32):
    return RNG.integers(0, 256, (n, c, h, w), dtype=np.uint8)


def make_tar(src: Path, dest: Path, arcname: str | None = None) -> Path:
    mode = "w:gz" if dest.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(dest, mode) as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(Path(arcname or src.name) / p.relative_to(src)), recursive=False)
    return dest


def into_tar(folder: Path, dest: Path) -> None:
    """Replace an extracted official folder by its archive."""
    make_tar(folder, dest)
    shutil.rmtree(folder)


# ---- CIFAR ---------------------------------------------------------------------------------

def write_cifar(root: Path, hundred=False, archive=False):
    """Official layout: protocol-2 pickles of dicts with bytes keys, data uint8 [N, 3072]."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)

    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))

    k = 100 if hundred else 10
    sets = {}
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        imgs, labels = rand_images(4), [int(x) for x in RNG.integers(0, k, 4)]
        sets[name] = (imgs, labels)
        key = b"fine_labels" if hundred else b"labels"
        dump(name, {b"data": imgs.reshape(4, -1), key: labels, b"batch_label": b"x"})
    if hundred:
        dump("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    else:
        dump("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    if archive:
        into_tar(folder, root / ("cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz"))
    return sets


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [False, True], ids=["extracted", "tar.gz"])
def test_cifar(tmp_path, archive, hundred):
    sets = write_cifar(tmp_path, hundred, archive)
    name, train_files, test_file = ("cifar100", ["train"], "test") if hundred else \
        ("cifar10", [f"data_batch_{i}" for i in range(1, 6)], "test_batch")
    train, test = load_dataset(name, "train", root=tmp_path), load_dataset(name, "test", root=tmp_path)
    assert torch.equal(train.images, torch.from_numpy(np.concatenate([sets[f][0] for f in train_files])))
    raw = sets[test_file][0].reshape(4, -1)  # row-major: R plane, G plane, B plane
    assert test.images.shape == (4, 3, 32, 32) and test.images[1, 1, 2, 3] == raw[1, 1024 + 2 * 32 + 3]
    assert test.labels.tolist() == sets[test_file][1] and train.name == name
    assert train.classes == [f"c{i}" for i in range(100 if hundred else 10)]


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(DataError, match="refusing to load posix.getcwd|refusing to load os.getcwd"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_missing_dataset_names_paths(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    for p in ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10-jpg.tar.gz"):
        assert str(tmp_path / p) in msg
    assert "SELFSUP_DATA" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    with pytest.raises(DataError, match="fashion-mnist.*train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(DataError, match="stl10_binary.tar.gz"):
        load_dataset("stl10", root=tmp_path)
    with pytest.raises(DataError, match="digits, cifar10, cifar100, mnist, fashion-mnist, stl10"):
        load_dataset("imagenet-9000")
    with pytest.raises(DataError, match="splits are: train, test"):
        load_dataset("cifar10", "unlabeled", root=tmp_path)


# ---- downloads (no network here: only the failure paths and the checksum) --------------------

def test_download_failure_is_clear(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download cifar-10-python.tar.gz.*no network"):
        load_dataset("cifar10", root=tmp_path, download=True)
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no empty folders


def test_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch):
    payload = b"official bytes"
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    bad = dl.Remote("f.bin", ("http://x/f.bin",), "0" * 32)
    with pytest.raises(DataError, match="md5"):
        dl.fetch(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left
    good = dl.Remote("f.bin", ("http://x/f.bin",), hashlib.md5(payload).hexdigest())
    assert dl.fetch(good, tmp_path).read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# ---- idx ----------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, prefix: str, n: int, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    imgs = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n).astype(np.uint8)
    for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
        data = idx_bytes(arr)
        path = folder / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
    return imgs, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets(tmp_path, gz):
    imgs, labels = write_idx_set(tmp_path / "fashion-mnist", "t10k", 5, gz)
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert ds.images.shape == (5, 1, 28, 28) and torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == labels.tolist() and ds.classes[0] == "T-shirt/top"
    imgs, _ = write_idx_set(tmp_path / "MNIST" / "raw", "train", 3, gz)  # torchvision's layout
    assert torch.equal(load_dataset("mnist", root=tmp_path).images[:, 0], torch.from_numpy(imgs))
    direct = load_dataset(str(tmp_path / "MNIST" / "raw" / f"train-images-idx3-ubyte{'.gz' if gz else ''}"))
    assert direct.labels is not None and len(direct) == 3


def test_idx_parsing_and_bad_files(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    assert read_idx(tmp_path / "a.idx").tolist() == arr.tolist()  # big-endian values
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(DataError, match="short is truncated.*\\[4, 28, 28\\]"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="magic is not an idx file.*1234"):
        read_idx(tmp_path / "magic")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:40])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")


# ---- STL-10 -------------------------------------------------------------------------------

def write_stl(root: Path, archive=False):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    sets = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        imgs = rand_images(n, 3, 96, 96)
        imgs[0, 0, 0, :] = 255  # a planted top row: wrong if the column-major order is ignored
        imgs[0, 0, 1:, 0] = 0
        sets[split] = imgs
        (folder / f"{split}_X.bin").write_bytes(imgs.transpose(0, 1, 3, 2).tobytes())  # column-major
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    if archive:
        into_tar(folder, root / "stl10_binary.tar.gz")
    return sets


@pytest.mark.parametrize("archive", [False, True])
def test_stl10(tmp_path, archive):
    sets = write_stl(tmp_path, archive)
    train = load_dataset("stl10", "train", root=tmp_path)
    assert torch.equal(train.images, torch.from_numpy(sets["train"]))
    assert (train.images[0, 0, 0] == 255).all() and (train.images[0, 0, 1:, 0] == 0).all()
    assert train.labels.tolist() == [0, 1, 2] and train.classes[9] == "k9"
    unl = load_dataset("stl10", "unlabelled", root=tmp_path)
    assert unl.labels is None and unl.images.shape == (4, 3, 96, 96) and unl.images.is_contiguous()
    assert torch.equal(unl.images, torch.from_numpy(sets["unlabeled"]))
    if not archive:
        x = tmp_path / "stl10_binary" / "test_X.bin"
        x.write_bytes(x.read_bytes()[:-5])
        with pytest.raises(DataError, match="test_X.bin.*truncated"):
            load_dataset("stl10", "test", root=tmp_path)


# ---- image folders and tars -----------------------------------------------------------------

def save(img: Image.Image, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_folder(root: Path):
    """split/class/file with PNGs in modes L, RGBA, P, I;16 and an RGB JPEG."""
    g = np.full((8, 8), 77, np.uint8)
    save(Image.fromarray(g), root / "train" / "cat" / "a.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 128
    save(Image.fromarray(rgba, "RGBA"), root / "train" / "cat" / "b.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    save(pal, root / "train" / "dog" / "c.png")
    save(Image.fromarray(np.full((8, 8), 257 * 200, np.uint16)), root / "train" / "dog" / "d.png")
    save(Image.fromarray(np.full((8, 8, 3), (250, 0, 0), np.uint8)), root / "test" / "dog" / "e.jpg")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    return root


def test_image_folder_modes(tmp_path):
    root = write_folder(tmp_path / "pets")
    train = load_dataset(root, "train")
    assert train.images.shape == (4, 3, 8, 8) and train.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 1, 1] and train.name == "pets"
    px = train.images[:, :, 0, 0].tolist()
    assert px == [[77] * 3, [10, 20, 30], [200, 100, 50], [200] * 3]
    test = load_dataset(str(root), "test")
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1]  # labels agree across splits
    assert abs(int(test.images[0, 0, 4, 4]) - 250) < 8
    with pytest.raises(DataError, match="none for split 'val'"):
        load_dataset(root, "val")


def test_grayscale_folder_keeps_one_channel(tmp_path):
    save(Image.fromarray(np.full((5, 6), 9, np.uint8)), tmp_path / "g" / "x" / "1.png")
    save(Image.fromarray(np.full((5, 6), 65535, np.uint16)), tmp_path / "g" / "y" / "2.png")
    save(Image.new("1", (6, 5), 1), tmp_path / "g" / "y" / "3.bmp")
    ds = load_dataset(tmp_path / "g")
    assert ds.images.shape == (3, 1, 5, 6) and ds.images[:, 0, 0, 0].tolist() == [9, 255, 255]
    with pytest.raises(DataError, match="no split folders.*split='train'"):
        load_dataset(tmp_path / "g", "test")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_tar_equals_folder(tmp_path, suffix):
    root = write_folder(tmp_path / "pets")
    tar = make_tar(root, tmp_path / f"pets{suffix}", arcname="wrapper")  # a wrapping folder is skipped
    for split in ("train", "test"):
        a, b = load_dataset(root, split), load_dataset(tar, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    assert load_dataset(tar).name == "pets"


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        save(Image.fromarray(rand_images(1, 3, 6, 6)[0].transpose(1, 2, 0)), tmp_path / "flat" / f"{i}.png")
    ds = load_dataset(tmp_path / "flat", "unlabelled")
    assert ds.labels is None and ds.classes is None and ds.num_classes == 0 and len(ds) == 3


def test_sizes_differ(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 15:25] = 255  # a white stripe in the middle survives the centre crop
    save(Image.fromarray(a), tmp_path / "s" / "c" / "wide.png")
    save(Image.fromarray(np.zeros((10, 10, 3), np.uint8)), tmp_path / "s" / "c" / "small.png")
    with pytest.raises(DataError, match="small.png is 10x10.*wide.png is 40x20|wide.png is 40x20.*small.png is 10x10"):
        load_dataset(tmp_path / "s")
    ds = load_dataset(tmp_path / "s", image_size=10)
    assert ds.images.shape == (2, 3, 10, 10)
    wide = ds.images[1, 0]  # sorted: small.png, wide.png
    assert (wide[:, 3:7] == 255).all() and (wide[:, 0] == 0).all()


def test_corrupt_images_skipped_or_strict(tmp_path):
    root = write_folder(tmp_path / "pets")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (root / "train" / "dog" / "c.png").read_bytes()
    (root / "train" / "dog" / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.warns(DataWarning, match="skipped 2 unreadable image.*of 6.*broken.jpg"):
        ds = load_dataset(root, cache=False)
    assert len(ds) == 4
    with pytest.raises(DataError, match="cannot decode image .*broken.jpg"):
        load_dataset(root, strict=True, cache=False)
    with pytest.warns(DataWarning, match="skipped 2"):
        load_dataset(root)  # fills the cache, still warns
    with pytest.warns(DataWarning, match="skipped 2"):
        load_dataset(root)  # from the cache, still warns
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset(root, strict=True)  # a cache entry with skipped files never satisfies strict
    tar = make_tar(root, tmp_path / "pets.tar")
    with pytest.raises(DataError, match=r"pets.tar:pets/train/cat/broken.jpg"):
        load_dataset(tar, strict=True)


def test_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images in the folder .*empty"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="cannot read the tar .*bad.tar.gz"):
        load_dataset(tmp_path / "bad.tar.gz")


# ---- cache --------------------------------------------------------------------------------

def test_cache_hit_skips_decoding_and_tracks_changes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "pets")
    tar = make_tar(root, tmp_path / "pets.tar.gz")
    first = load_dataset(tar)
    entries = list((tmp_path / "cache" / "decoded").glob("pets-train-*.npz"))
    assert len(entries) == 1 and not list(tmp_path.glob("*.npz"))  # never next to the source
    calls = []
    real = folder_mod.decode
    monkeypatch.setattr(folder_mod, "decode", lambda *a: calls.append(1) or real(*a))
    second = load_dataset(tar)
    assert calls == [] and torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes and second.name == "pets"
    load_dataset(root)  # the folder has its own entry
    n = len(calls)
    assert n == 4
    save(Image.fromarray(np.full((8, 8), 1, np.uint8)), root / "train" / "cat" / "a.png")
    os.utime(root / "train" / "cat" / "a.png", ns=(time.time_ns() + 10**9,) * 2)
    assert load_dataset(root).images[0, 0, 0, 0] == 1 and len(calls) == n + 4  # an edit invalidates
    load_dataset(root, cache=False)
    assert len(calls) == n + 8


# ---- npz ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_layouts(tmp_path, layout):
    imgs = rand_images(5, 1 if layout == "NHW" else 3, 7, 9)
    arr = {"NHWC": imgs.transpose(0, 2, 3, 1), "NCHW": imgs, "NHW": imgs[:, 0]}[layout]
    np.savez(tmp_path / "d.npz", images=arr, labels=np.arange(5), classes=np.array(list("abcde")))
    ds = load_dataset(tmp_path / "d.npz")
    assert torch.equal(ds.images, torch.from_numpy(imgs)) and ds.labels.tolist() == [0, 1, 2, 3, 4]
    assert ds.classes == list("abcde") and ds.name == "d"


def test_npz_split_keys_and_floats(tmp_path):
    x = rand_images(4, 3, 5, 5).transpose(0, 2, 3, 1)
    np.savez(tmp_path / "s.npz", x_train=x / 255.0, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2))
    train, test = load_dataset(tmp_path / "s.npz"), load_dataset(tmp_path / "s.npz", "test")
    assert torch.equal(train.images, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())) and len(test) == 2
    with pytest.raises(DataError, match="looked for keys images_val, x_val, X_val; the file has x_train"):
        load_dataset(tmp_path / "s.npz", "val")


def test_npz_refusals(tmp_path):
    np.savez(tmp_path / "w.npz", pictures=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="looked for keys .*images.*the file has pictures"):
        load_dataset(tmp_path / "w.npz")
    np.savez(tmp_path / "i.npz", images=np.zeros((2, 4, 4), np.int64))
    with pytest.raises(DataError, match="'images'.*int64"):
        load_dataset(tmp_path / "i.npz")
    np.savez(tmp_path / "f.npz", X=np.full((2, 4, 4), 3.0))
    with pytest.raises(DataError, match="'X'.*\\[0, 1\\]"):
        load_dataset(tmp_path / "f.npz")


# ---- digits, ImageSet, stats, roots --------------------------------------------------------

def test_digits_offline_stratified():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert train.images.max() == 255 and train.classes == [str(i) for i in range(10)]
    n_test, n_train = torch.bincount(test.labels, minlength=10), torch.bincount(train.labels, minlength=10)
    assert ((n_test / (n_test + n_train) - 0.2).abs() < 0.01).all()  # stratified
    assert torch.equal(load_dataset("digits", "test").images, test.images)  # deterministic
    assert load_dataset("digits", image_size=16).images.shape[1:] == (1, 16, 16)


def test_imageset_api():
    ds = ImageSet(torch.from_numpy(rand_images(6, 3, 4, 4)), torch.tensor([0, 1, 2, 0, 1, 4]), None, "x")
    assert len(ds) == 6 and ds.num_classes == 5 and "n=6" in repr(ds) and len(repr(ds)) < 200
    sub = ds.subset([5, 0])
    assert sub.labels.tolist() == [4, 0] and torch.equal(sub.images[1], ds.images[0])
    assert len(ds.subset(ds.labels == 1)) == 2 and len(ds.subset(torch.tensor([1]))) == 1
    assert ds.to("cpu").images.device.type == "cpu"
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), None, None)


def test_dataset_stats_exact():
    ds = ImageSet(torch.from_numpy(rand_images(50, 3, 16, 16)), None, None)
    mean, std = dataset_stats(ds)
    x = ds.images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)


def test_data_root_precedence(tmp_path, monkeypatch):
    assert data_root(tmp_path / "a") == tmp_path / "a"
    assert data_root() == tmp_path / "no-data"
    monkeypatch.delenv("SELFSUP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "selfsup" / "data"


# ---- the project's shared real data ----------------------------------------------------------

needs_shared = pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason=f"no shared data at {SHARED}")


@needs_shared
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train", root=SHARED)
    test = load_dataset("fashion-mnist", "test", root=SHARED)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10 and train.classes[9] == "Ankle boot"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpg.tar.gz").is_file(), reason=f"no shared data at {SHARED}")
def test_real_cifar10_jpg():
    test = load_dataset("cifar10", "test", root=SHARED)
    assert test.images.shape == (10000, 3, 32, 32) and test.classes[0] == "airplane"
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean, _ = dataset_stats(test)
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=0.01)  # README's (train) channel means


def test_jpeg_decoded_by_libjpeg_turbo_directly_gives_pils_pixels(tmp_path):
    """decode() takes grey and colour JPEGs past PIL (selfsup/data/decode.py _turbo_jpeg): the
    pixels must be PIL's, for every subsampling and progressive files; EXIF (orientation), CMYK
    and damaged files go through PIL as before."""
    from selfsup.data.decode import _turbo_jpeg, decode, to_array, upright

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    files = {}
    for name, mode, kw in (("420", "RGB", {"subsampling": 2}), ("444", "RGB", {"subsampling": 0}),
                           ("422", "RGB", {"subsampling": 1}), ("progressive", "RGB", {"progressive": True}),
                           ("grey", "L", {}), ("cmyk", "CMYK", {})):
        buf = io.BytesIO()
        Image.fromarray(smooth).convert(mode).save(buf, "JPEG", quality=90, **kw)
        files[name] = buf.getvalue()
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: PIL turns it upright
    Image.fromarray(smooth).save(buf, "JPEG", quality=90, exif=exif)
    files["exif"] = buf.getvalue()
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as img:
            want = to_array(upright(img))
        fast = _turbo_jpeg(data)
        assert (fast is None) == (name in ("cmyk", "exif")), name
        if fast is not None:
            assert fast.shape == want.shape and np.array_equal(fast, want), name
        assert np.array_equal(decode(data, "JPEG", None), want), name
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        assert np.array_equal(decode(str(path), "JPEG", 20), decode(data, "JPEG", 20)), name
    assert decode(files["exif"], "JPEG", None).shape == (64, 48, 3)  # turned upright
    cut = files["420"][: len(files["420"]) // 2]
    assert _turbo_jpeg(cut) is None
    with pytest.raises(OSError):
        decode(cut, "JPEG", None)
