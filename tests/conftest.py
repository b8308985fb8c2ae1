"""Shared test setup: decoded-data cache in a per-session folder, and the shared real data."""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from selfsup.config import build_config, recipe_path
from selfsup.methods import METHODS
from two_player import TwoPlayer

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


class LinearBackbone(torch.nn.Module):
    """The smallest backbone: flatten a [B, 3, 4, 4] batch, one linear layer to `dim` = 6."""

    dim = 6

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 6))

    def forward(self, x):
        return self.net(x)


class TinyConvNet(nn.Module):
    """A ResNet-ish stand-in: conv + BN + ReLU, global pooling (any input size)."""

    dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A test's own decode cache, and no user data root (the data tests use it for every test)."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "no-data"))


needs_cifar10 = pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpg.tar.gz").is_file(),
                                   reason=f"CIFAR-10 not found in {SHARED_DATA}")

# A run small enough for a test: digits (offline), an 8-channel ResNet-18, 16x16 views; each
# method's config adds its own `tiny` settings (selfsup/protocol.py), so a new method needs no
# entry here.
TINY = ["backbone.width=0.125", "views.size=16", "trainer.batch_size=64", "trainer.epochs=1",
        "trainer.progress=false", "trainer.knn_every=-1", "trainer.log_every=5", "report.auto=false"]

# The two-player method of the tests joins the registry, so every registry-wide test runs it.
METHODS.setdefault("two_player", TwoPlayer)


def tiny_config(method: str, *extra: str):
    """The quick (digits) recipe with its SimCLR section swapped for `method`'s defaults, shrunk."""
    recipe = OmegaConf.load(recipe_path("quick"))
    del recipe["method"]
    return build_config(recipe, [*TINY, f"method.name={method}",
                                 *METHODS[method].config_class.tiny, *extra])


class Killed(Exception):
    """A run killed on purpose (see `die_after_checkpoint`)."""


def die_after_checkpoint(trainer, step: int) -> None:
    """`trainer` raises Killed right after saving its checkpoint at `step`: a run killed there."""
    save = trainer.save

    def save_then_die():
        save()
        if trainer.step == step:
            raise Killed

    trainer.save = save_then_die
