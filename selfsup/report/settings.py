"""The report's settings (the `report` section of a config), apart from the code that draws it
so that the config can hold them without importing matplotlib or scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    """`RUN/report.html` (selfsup/report/): what it shows and how much it computes.

    auto: write it at the end of `selfsup pretrain` (`selfsup report RUN` writes it any time).
    queries: test images whose nearest training neighbours are shown; neighbours: how many each.
    bank: training images searched for neighbours (a seeded subset; null: all).
    map_images: test images in the 2-D embedding map (t-SNE), a seeded class-stratified subset;
        also the images the health panel of the final encoder is computed on.
    attention_images: test images whose last-block attention is drawn (ViT backbones).
    """

    auto: bool = True
    queries: int = 8
    neighbours: int = 6
    bank: int | None = 10000
    map_images: int = 1000
    attention_images: int = 6

    def __post_init__(self):
        for name in ("queries", "neighbours", "bank", "map_images", "attention_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"report.{name}={value}: must be at least 1")
