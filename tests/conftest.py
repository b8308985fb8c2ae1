"""Shared test setup: decoded-data cache in a per-session folder, and the shared real data."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SELFSUP_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tests never write to the home cache; a dataset decoded once is reused within the session."""
    old = os.environ.get("SELFSUP_CACHE")
    os.environ["SELFSUP_CACHE"] = str(tmp_path_factory.mktemp("selfsup-cache"))
    yield
    if old is None:
        os.environ.pop("SELFSUP_CACHE", None)
    else:
        os.environ["SELFSUP_CACHE"] = old


needs_cifar10 = pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpg.tar.gz").is_file(),
                                   reason=f"CIFAR-10 not found in {SHARED_DATA}")
