"""Where datasets are looked for and decoded arrays cached, and what one load asked for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .imageset import DataError

DATA_ENV = "SELFSUP_DATA"
CACHE_ENV = "SELFSUP_CACHE"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "selfsup"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from and downloaded into:
    explicit `root` > $SELFSUP_DATA > ~/.cache/selfsup/data."""
    if root is not None and str(root) != "":
        return Path(root).expanduser().absolute()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return _user_cache() / "data"


def cache_root() -> Path:
    """The folder for decoded arrays: $SELFSUP_CACHE, else ~/.cache/selfsup."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().absolute() if env else _user_cache()


def checkout_data() -> Path:
    """The project's shared data folder when running from a checkout (`<repo>/../shared/data`)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def search_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a named dataset, in order.

    With neither `root` nor $SELFSUP_DATA set, the checkout's shared data folder is searched after
    the default, so a fresh clone next to it (CI, benchmarks) finds the data with no setup.
    """
    roots = [data_root(root)]
    if (root is None or str(root) == "") and not os.environ.get(DATA_ENV):
        shared = checkout_data()
        if shared.is_dir() and shared not in roots:
            roots.append(shared)
    return roots


def root_note(root: str | os.PathLike | None = None) -> str:
    """How the data root was chosen, for error messages."""
    env = os.environ.get(DATA_ENV)
    if root is not None and str(root) != "":
        how = "from the root argument (data.root)"
    elif env:
        how = f"from ${DATA_ENV}={env}"
    else:
        how = f"the default; ${DATA_ENV} is not set"
    return f"data root {data_root(root)} ({how}); pass root=... or set ${DATA_ENV} to change it"


@dataclass(frozen=True)
class LoadRequest:
    """What load_dataset was asked for; readers of named datasets take this one argument.

    split: normalised split name. roots: folders to search, in order. root: the caller's root
    argument (for messages and the download target). image_size, cache, download, strict: as in
    load_dataset.
    """

    split: str
    roots: tuple[Path, ...]
    root: str | os.PathLike | None = None
    image_size: int | None = None
    cache: bool = True
    download: bool = False
    strict: bool = False

    @property
    def download_root(self) -> Path:
        return data_root(self.root)

    def check_split(self, name: str, splits: tuple[str, ...]) -> None:
        if self.split not in splits:
            raise DataError(f"{name} has no split {self.split!r}; its splits are: {', '.join(splits)}")

    def not_found(self, name: str, looked: list[Path], url: str, extra: str = "") -> DataError:
        lines = [f"{name} ({self.split}) not found. Looked for:"]
        lines += [f"  {p}" for p in looked]
        lines.append(root_note(self.root) + ".")
        if extra:
            lines.append(extra)
        lines.append(f"Official source: {url} (or pass download=True to fetch it into {self.download_root}).")
        return DataError("\n".join(lines))
