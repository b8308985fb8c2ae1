"""Reading a tar archive in one pass, and refusing a damaged one.

tarfile's stream mode ends quietly at the first header it cannot parse after the first member,
and its own gzip reader never checks the CRC at the end, so a damaged archive would load as a
smaller one (a class gone, without a word). Here the archive is decompressed by gzip, bz2 or
lzma, which verify checksums and lengths once read to the end; it is read to the end; and what
follows the last member must be the end-of-archive marker and zero padding.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import tarfile
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .imageset import DataError

_READ = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
# Decompressors by the magic bytes the formats start with; anything else is read as a plain tar.
_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_DAMAGE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


@dataclass
class TarContents:
    """What one pass over a tar kept. Names are normalised member paths ("a/b.png")."""

    data: dict[str, bytes] = field(default_factory=dict)  # the members `keep` asked for
    links: dict[str, str] = field(default_factory=dict)  # link member -> the member it names
    too_big: list[str] = field(default_factory=list)  # asked for, but over the size cap


class _Recorder:
    """A stream that remembers its last few reads, so that the bytes after the last member
    tarfile accepted can be looked at once tarfile is done (it reads ahead, in records)."""

    def __init__(self, f: BinaryIO, name: str):
        self.f, self.name, self.pos = f, name, 0
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=8)

    def read(self, size: int = -1) -> bytes:
        b = self.f.read(size)
        self.recent.append((self.pos, b))
        self.pos += len(b)
        return b

    def since(self, offset: int) -> bytes:
        held = b"".join(b for _, b in self.recent)
        start = self.recent[0][0] if self.recent else self.pos
        return held[max(0, offset - start):] if offset < self.pos else b""


def _name(name: str) -> str:
    return posixpath.normpath(name).lstrip("/")


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        magic = f.read(6)
    opener = next((op for m, op in _OPENERS if magic.startswith(m)), open)
    return opener(path, "rb")


def read_tar(path: Path, keep: Callable[[str], int]) -> TarContents:
    """Stream the tar at `path` once, holding the bytes of each regular member for which
    `keep(name)` gives a size cap it fits under (0: not wanted), and reading every other member
    through, so that a member cut short shows. DataError when the archive is damaged."""
    out = TarContents()
    last = None
    try:
        raw = _open(path)
    except OSError as e:
        raise DataError(f"cannot read the tar {path}: {e.strerror or e}") from None
    with raw:
        rec = _Recorder(raw, str(path))
        try:
            with tarfile.open(fileobj=rec, mode="r|") as tf:
                for m in tf:
                    name = _name(m.name)
                    if m.issym():
                        out.links[name] = _name(posixpath.join(posixpath.dirname(name), m.linkname))
                    elif m.islnk():
                        out.links[name] = _name(m.linkname)
                    elif m.isfile():
                        cap = keep(name)
                        f = tf.extractfile(m)
                        if cap and m.size <= cap:
                            out.data[name] = f.read()
                        else:
                            if cap:
                                out.too_big.append(name)
                            while f.read(_READ):
                                pass
                    last = m.name
                end = tf.offset
            tail = rec.since(end)
            rest = 0  # past what tarfile pulled: read to the end, so the decompressor checks it
            while chunk := raw.read(_READ):
                rest += len(chunk) - chunk.count(0)
        except _DAMAGE as e:
            # A first header that does not parse is no tar at all; any other failure is damage.
            if last is None and isinstance(e, tarfile.ReadError) and "zlib" not in str(e):
                raise DataError(f"cannot read the tar {path}: {e} (not a tar archive, or damaged)") from None
            where = f", after member {last!r}" if last else ", before the first member"
            raise DataError(f"{path} is damaged: {e}{where}") from None
    where = f", after member {last!r}" if last else ", before the first member"
    if len(tail) < _BLOCK:
        raise DataError(f"{path} is damaged: it is cut short (no end-of-archive marker){where}")
    if tail[:_BLOCK].count(0) != _BLOCK:
        raise DataError(f"{path} is damaged: a member header that cannot be read{where}")
    if rest or tail.count(0) != len(tail):
        raise DataError(f"{path} is damaged: data that is not zero padding past the end-of-archive "
                        f"marker{where}")
    return out
