"""Few-label linear probes: the frozen encoder's accuracy when only a few labels are known.

Subsets of the labelled training split are drawn class-balanced and seeded, by a count per
class (iGPT's CIFAR-10 protocol: 4, 25 and 400 per class, 40 / 250 / 4000 labels) or by a
fraction of each class (SimCLR's 1 % and 10 %), several times (draw d uses seed d, so a larger
subset of a draw holds its smaller ones); on each, the linear probe of `eval.linear` is trained
on the cached features of those images only and tested on the whole test split. Reported: the
mean and the sample standard deviation (n - 1) over the draws, per setting.

Hyper-parameters are chosen as the full probe chooses them, on a held-out share of the labelled
subset, which a few-label user also has: each class holds out max(eval.linear.val_fraction,
1 / its count) of its images, at most half; a subset with a class of a single image has no
search and uses eval.linear.weight_decay.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from selfsup.eval.linear import LinearConfig, linear_probe
from selfsup.eval.subsets import stratified_subset


@dataclass
class FewshotConfig:
    """per_class: labelled images per class of each setting (iGPT: 4, 25, 400); fractions: share
    of each class of each further setting (SimCLR: 0.01, 0.1); draws: subsets per setting."""

    per_class: list[int] = field(default_factory=lambda: [4, 25, 400])
    fractions: list[float] = field(default_factory=list)
    draws: int = 5

    def __post_init__(self):
        if any(n < 1 for n in self.per_class):
            raise ValueError(f"eval.fewshot.per_class={list(self.per_class)}: each must be at least 1")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"eval.fewshot.fractions={list(self.fractions)}: each must be in (0, 1]")
        if self.draws < 1:
            raise ValueError(f"eval.fewshot.draws={self.draws}: must be at least 1")
        if not self.per_class and not self.fractions:
            raise ValueError("eval.fewshot: per_class and fractions are both empty: give a setting")

    def settings(self) -> list[dict]:
        return ([{"per_class": n} for n in self.per_class] + [{"fraction": f} for f in self.fractions])


def setting_name(s: dict) -> str:
    return f"{s['per_class']} per class" if "per_class" in s else f"{100 * s['fraction']:g} % of each class"


def probe_settings(cfg: LinearConfig, y: Tensor) -> LinearConfig:
    """`cfg` with a held-out share that leaves each class of `y` at least one image to choose
    hyper-parameters on (see the module docstring), or no search."""
    counts = torch.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        return dataclasses.replace(cfg, val_fraction=0.0)
    return dataclasses.replace(cfg, val_fraction=min(0.5, max(cfg.val_fraction, 1 / smallest)))


def fewshot_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, *,
                  cfg: FewshotConfig, linear: LinearConfig, num_classes: int | None = None,
                  progress: bool = False, features: str | None = None) -> dict:
    """{"top1" / "top1_std": the first setting's mean and std, "settings": [{"setting", "per_class" or "fraction",
    "labels", "mean", "std", "draws": [{"seed", "labels", "top1"}]}], "protocol"}."""
    rows = []
    for s in cfg.settings():
        draws = []
        for seed in range(cfg.draws):
            idx, _ = stratified_subset(train_y, seed, **s)
            if len(idx) == 0:
                raise ValueError(f"eval.fewshot: {setting_name(s)} of {len(train_y)} training images "
                                 f"selects none")
            y = train_y[idx]
            res = linear_probe(train_f[idx], y, test_f, test_y, cfg=probe_settings(linear, y),
                               num_classes=num_classes, seed=seed, progress=progress)
            draws.append({"seed": seed, "labels": len(idx), "top1": res["top1"],
                          "weight_decay": res["weight_decay"], "held_out": res.get("held_out", 0)})
        accs = [d["top1"] for d in draws]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        rows.append({"setting": setting_name(s), **s, "labels": round(sum(d["labels"] for d in draws) / len(draws)),
                     "mean": mean, "std": std, "draws": draws})
    protocol = (f"few-label linear probe (eval.linear): class-balanced subsets of the {len(train_y)} training images, "
                f"{cfg.draws} seeded draws per setting (draw d: seed d), mean and sample std over "
                f"draws; hyper-parameters chosen on a held-out share of each subset (at least one "
                f"image per class, at most half); tested on all {len(test_y)} test images"
                + (f", features: {features}" if features else ""))
    return {"top1": rows[0]["mean"], "top1_std": rows[0]["std"], "settings": rows, "protocol": protocol}
