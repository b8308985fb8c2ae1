"""Few-label linear probes: the frozen encoder's accuracy when only a few labels are known.

Subsets of the labelled training split are drawn class-balanced and seeded, by a count per
class (iGPT's CIFAR-10 protocol: 4, 25 and 400 per class, 40 / 250 / 4000 labels) or by a
fraction of each class (SimCLR's 1 % and 10 %), several times (draw d uses seed d, so a larger
subset of a draw holds its smaller ones); on each, the linear probe of `eval.linear` is trained
on the cached features of those images only and tested on the whole test split. Reported: the
mean and the sample standard deviation (n - 1) over the draws, per setting.

With `eval.fewshot.finetune: true`, each subset of each draw also fine-tunes a copy of the whole
encoder (`eval.finetune`'s recipe, selfsup/eval/finetune.py, on that subset alone), reported the
same way beside the probe.

Hyper-parameters are chosen as the full probe chooses them, on a held-out share of the labelled
subset, which a few-label user also has: each class holds out max(eval.linear.val_fraction,
1 / its count) of its images, at most half; a subset with a class of a single image has no
search and uses eval.linear.weight_decay.
"""

from __future__ import annotations

import copy
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
    of each class of each further setting (SimCLR: 0.01, 0.1); draws: subsets per setting;
    finetune: also fine-tune the encoder on each subset (eval.finetune settings; one fine-tuning
    per setting and draw, so it costs far more than the probes)."""

    per_class: list[int] = field(default_factory=lambda: [4, 25, 400])
    fractions: list[float] = field(default_factory=list)
    draws: int = 5
    finetune: bool = False

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


def subsets(y: Tensor, cfg: FewshotConfig):
    """(setting, seed, indexes) of every draw of every setting, in order."""
    for s in cfg.settings():
        for seed in range(cfg.draws):
            idx, _ = stratified_subset(y, seed, **s)
            if len(idx) == 0:
                raise ValueError(f"eval.fewshot: {setting_name(s)} of {len(y)} training images selects none")
            yield s, seed, idx


def summary(cfg: FewshotConfig, draws: list[dict]) -> list[dict]:
    """Per setting: {"setting", "per_class" or "fraction", "labels", "mean", "std" (sample, n - 1),
    "draws"}, from the draws' rows ({"setting": dict, "seed", "labels", "top1", ...}) in order."""
    rows = []
    for s in cfg.settings():
        mine = [{k: v for k, v in d.items() if k != "setting"} for d in draws if d["setting"] == s]
        accs = [d["top1"] for d in mine]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        rows.append({"setting": setting_name(s), **s, "labels": round(sum(d["labels"] for d in mine) / len(mine)),
                     "mean": mean, "std": std, "draws": mine})
    return rows


def fewshot_finetune(backbone, train, test, mean, std, cfg: FewshotConfig, fcfg, *, device=None,
                     precision: str = "fp32", progress: bool = False, description: str | None = None) -> dict:
    """Fine-tuning (`fcfg`, a FinetuneConfig) of a fresh copy of `backbone` on each subset of each
    draw, tested on `test` (or fcfg.test_subset of it): {"settings": rows as `summary`, "protocol"}."""
    from selfsup.eval.finetune import finetune

    fcfg = dataclasses.replace(fcfg, train_subset=None)  # the subset is the draw's
    draws, res = [], None
    for s, seed, idx in subsets(train.labels, cfg):
        res = finetune(copy.deepcopy(backbone), train.subset(idx), test, mean, std, fcfg, device=device,
                       precision=precision, progress=progress, description=description)
        draws.append({"setting": s, "seed": seed, "labels": len(idx), "top1": res["top1"], "steps": res["steps"]})
    protocol = (f"few-label fine-tuning: the same class-balanced subsets ({cfg.draws} draws per setting, "
                f"mean and sample std), each fine-tuning a fresh copy of the encoder; the last draw's "
                f"{res['protocol']}")
    return {"settings": summary(cfg, draws), "protocol": protocol}


def fewshot_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, *,
                  cfg: FewshotConfig, linear: LinearConfig, num_classes: int | None = None,
                  progress: bool = False, features: str | None = None) -> dict:
    """{"top1" / "top1_std": the first setting's mean and std, "settings": [{"setting", "per_class" or "fraction",
    "labels", "mean", "std", "draws": [{"seed", "labels", "top1"}]}], "protocol"}."""
    draws = []
    for s, seed, idx in subsets(train_y, cfg):
        y = train_y[idx]
        res = linear_probe(train_f[idx], y, test_f, test_y, cfg=probe_settings(linear, y),
                           num_classes=num_classes, seed=seed, progress=progress)
        draws.append({"setting": s, "seed": seed, "labels": len(idx), "top1": res["top1"],
                      "weight_decay": res["weight_decay"], "held_out": res.get("held_out", 0)})
    rows = summary(cfg, draws)
    protocol = (f"few-label linear probe (eval.linear): class-balanced subsets of the {len(train_y)} training images, "
                f"{cfg.draws} seeded draws per setting (draw d: seed d), mean and sample std over "
                f"draws; hyper-parameters chosen on a held-out share of each subset (at least one "
                f"image per class, at most half); tested on all {len(test_y)} test images"
                + (f", features: {features}" if features else ""))
    return {"top1": rows[0]["mean"], "top1_std": rows[0]["std"], "settings": rows, "protocol": protocol}
