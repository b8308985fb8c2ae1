"""Fetching the official archives, checked against their published checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .imageset import DataError
from .tarstream import read_tar


@dataclass(frozen=True)
class Remote:
    """One official file: where it is published (mirrors in order) and its md5, as published by
    the dataset's authors and used by torchvision."""

    filename: str
    urls: tuple[str, ...]
    md5: str


_CIFAR = "https://www.cs.toronto.edu/~kriz/"
# The MNIST home page often refuses downloads; the PyTorch mirror serves the identical files
# (the md5 check makes any mirror safe).
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


def _idx_files(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(name, tuple(m + name for m in mirrors), md5) for name, md5 in md5s.items())


OFFICIAL: dict[str, tuple[Remote, ...]] = {
    "cifar10": (Remote("cifar-10-python.tar.gz", (_CIFAR + "cifar-10-python.tar.gz",),
                       "c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (Remote("cifar-100-python.tar.gz", (_CIFAR + "cifar-100-python.tar.gz",),
                        "eb9058c3a382ffc7106e4002c42a8d85"),),
    "stl10": (Remote("stl10_binary.tar.gz", ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",),
                     "91f7769df0f17e558f3565bffb0c7dfb"),),
    "mnist": _idx_files(_MNIST, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": _idx_files(_FASHION, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}

HOMEPAGES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "stl10": "https://cs.stanford.edu/~acoates/stl10/",
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist",
}


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(remote: Remote, folder: Path, timeout: float = 60.0) -> Path:
    """Download `remote` into `folder` unless a copy with the right md5 is already there.

    The file is written under a temporary name and renamed only once its md5 matches, so an
    interrupted or corrupted download never leaves a file that looks complete.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    if dest.exists() and _md5(dest) == remote.md5:
        return dest
    errors = []
    for url in remote.urls:
        tmp = folder / f".{remote.filename}.{os.getpid()}.part"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            got = _md5(tmp)
            if got != remote.md5:
                errors.append(f"{url}: md5 {got} does not match the published {remote.md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    if created and not any(folder.iterdir()):
        folder.rmdir()
    raise DataError(
        f"could not download {remote.filename} into {folder} (no network?):\n  "
        + "\n  ".join(errors)
        + f"\nDownload it by hand from one of those addresses and place it at {dest}."
    )


def download(name: str, folder: Path) -> list[Path]:
    """Fetch every official file of dataset `name` into `folder`."""
    return [fetch(remote, folder) for remote in OFFICIAL[name]]


def extract_members(archive: Path, folder: Path, wanted: set[str]) -> None:
    """Extract the regular files of `archive` whose base names are in `wanted` into `folder`,
    each written atomically. Only known names are written, so a crafted archive cannot place
    files outside `folder`.

    The archive is first read through once for damage (tarfile's stream mode stops quietly at a
    bad header and never checks the gzip CRC), so that a damaged one extracts nothing rather than
    the members before the damage. That costs a second pass, once per download."""
    read_tar(archive, lambda name: 0)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r|*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or base not in wanted:
                    continue
                tmp = folder / f".{base}.{os.getpid()}.part"
                try:
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(tf.extractfile(member), out, 1 << 20)
                    os.replace(tmp, folder / base)
                finally:
                    tmp.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, zlib.error) as e:  # it changed since it was checked
        raise DataError(f"{archive} is damaged: {e}") from None
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {folder}: {e}") from None
