"""Batched, on-device random views: every image gets its own draw, seeded by a Generator."""

from . import ops, pretext
from .recipes import (
    ViewConfig,
    Views,
    ViewSet,
    build_view_set,
    build_views,
    byol,
    eval_transform,
    multicrop,
    simclr,
)

__all__ = [
    "ViewConfig",
    "Views",
    "ViewSet",
    "build_views",
    "build_view_set",
    "eval_transform",
    "simclr",
    "byol",
    "multicrop",
    "ops",
    "pretext",
]
