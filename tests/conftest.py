"""Shared test setup: decoded-data cache in a per-session folder, and the shared real data."""

import os
from pathlib import Path

import pytest
import torch

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


needs_cifar10 = pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpg.tar.gz").is_file(),
                                   reason=f"CIFAR-10 not found in {SHARED_DATA}")

# A run small enough for a test: digits (offline), an 8-channel ResNet-18, 16x16 views.
TINY = ["backbone.width=0.125", "views.size=16", "trainer.batch_size=64", "trainer.epochs=1",
        "trainer.progress=false", "trainer.knn_every=-1", "trainer.log_every=5"]
# Small heads, for the methods whose config has these fields.
TINY_HEADS = {"proj_hidden": 32, "proj_dim": 16}
# What a method needs beyond TINY to be small: its name plus any method-specific sizes.
# A 2-block ViT of width 32 over 4x4 patches (16 patches of a 16 px view) for masked models.
TINY_VIT = ["backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2",
            "backbone.num_heads=2", "backbone.patch_size=4", "views.n_views=1"]
TINY_TOKENS = ["method.vocab_size=32", "method.tokenizer_images=256"]
TINY_METHOD = {
    "mae": [*TINY_VIT, "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"],
    "beit": [*TINY_VIT, *TINY_TOKENS],
    "splitmask": [*TINY_VIT, *TINY_TOKENS, "method.decoder_dim=32", "method.decoder_depth=1",
                  "method.decoder_heads=2"],
    "mocov2": ["method.queue_size=256"],
    "dino": ["method.out_dim=64"],
    # Pretext tasks: one view. Tiles come from 24 px views (5-7 px tiles): with tiles under 5 px
    # the ResNet's last stride-2 conv sees a 1x1 map, whose bf16 weight gradient oneDNN does not
    # compute deterministically, and exact resume would fail for that reason alone.
    "rotation": ["views.n_views=1", "method.head_hidden=32"],
    "relpatch": ["views.n_views=1", "views.size=24", "method.head_hidden=32"],
    "jigsaw": ["views.n_views=1", "views.size=24", "method.n_perms=24", "method.tile_dim=16",
               "method.head_hidden=32"],
    "damaged_jigsaw": ["views.n_views=1", "views.size=24", "method.n_perms=24", "method.tile_dim=16",
                       "method.head_hidden=32", "method.decode_size=4"],
}


def tiny_config(method: str, *extra: str):
    """The quick (digits) recipe with its SimCLR section swapped for `method`'s defaults, shrunk."""
    from omegaconf import OmegaConf

    from selfsup.config import build_config, recipe_path

    from dataclasses import fields

    from selfsup.methods import METHODS

    recipe = OmegaConf.load(recipe_path("quick"))
    del recipe["method"]
    names = {f.name for f in fields(METHODS[method].config_class)}
    heads = [f"method.{k}={v}" for k, v in TINY_HEADS.items() if k in names]
    return build_config(recipe, [*TINY, f"method.name={method}", *heads,
                                 *TINY_METHOD.get(method, []), *extra])
