"""Small real files for the data tests (tests/test_bad_data.py, tests/test_bad_official_data.py,
tests/test_captions.py)."""

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png(value: int, w: int = 8, h: int = 8) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(b, "PNG")
    return b.getvalue()


def tar_of(files: dict[str, bytes], links: dict[str, str] = ()) -> bytes:
    """An uncompressed tar of `files` (in this order) and then symbolic links."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return b.getvalue()


def overwrite(data: bytes, at: int, junk: bytes = b"\x5a" * 24) -> bytes:
    return data[:at] + junk + data[at + len(junk):]
