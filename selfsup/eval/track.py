"""Does the pretraining loss track representation quality? (iGPT, Chen et al. 2020, §4.2 and
fig. 3: over training, a lower held-out generative loss goes with a better linear probe.)

`selfsup eval PROTOCOLS RUN --checkpoints` follows a run through its kept checkpoints
(`trainer.keep_checkpoints: 0` keeps every one) and the initialisation it started from (step 0).
At each point it measures, on images the pretraining never saw:
- the method's own loss on `eval.loss_images` test images (its views drawn from one fixed seed,
  so every point sees the same inputs; eval mode; the sum over the method's parameter sets, as
  the trainer logs it), with the method's metrics (iGPT's bits per token);
- the frozen protocols (k-NN, linear probe) as `selfsup eval` runs them; with eval.layer=all,
  the best layer's top-1 counts.
Then Pearson's and Spearman's correlation between the loss and each protocol's top-1. Any method
works: its loss only has to be computable on a batch of test images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from selfsup.config import Config, view_configs
from selfsup.device import autocast
from selfsup.eval.features import FeatureCache, frozen_eval
from selfsup.eval.protocols import evaluate
from selfsup.eval.subsets import stratified_subset
from selfsup.protocol import Progress, as_float, method_inputs, param_sets
from selfsup.train.checkpoint import PREFIX
from selfsup.train.trainer import run_length
from selfsup.views import build_view_set


@torch.no_grad()
def heldout_loss(method: nn.Module, views: Callable, images: Tensor, progress: Progress, *,
                 batch_size: int = 256, device: torch.device | str = "cpu", precision: str = "fp32",
                 seed: int = 0) -> dict[str, float]:
    """{"loss": the method's loss, then its metrics}, each the mean over `images` (uint8
    [N, C, H, W]) in batches of `batch_size`; batch i draws its views (the view set `views`)
    and its `prepare` inputs from a generator seeded with seed + i."""
    device = torch.device(device)
    sets = param_sets(method)
    totals: dict[str, float] = {}
    with frozen_eval(method):
        for i, start in enumerate(range(0, len(images), batch_size)):
            x = images[start:start + batch_size].to(device)
            inputs = method_inputs(method, views, x, torch.Generator(device=device).manual_seed(seed + i))
            with autocast(device, precision):
                outs = [s.loss(inputs, progress) for s in sets]
            values = {"loss": sum(o.loss.float() for o in outs)}
            for o in outs:
                values.update(o.metrics or {})
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + as_float(v) * len(x)
    return {k: v / len(images) for k, v in totals.items()}


def correlations(losses: Sequence[float], top1: Sequence[float]) -> dict[str, float | None]:
    """Pearson's r and Spearman's rho between held-out loss and top-1 (negative: a lower loss
    goes with a higher accuracy); None with fewer than 3 points or a constant series."""
    a, b = np.asarray(losses, dtype=float), np.asarray(top1, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(np.corrcoef(a, b)[0, 1]), "spearman": float(spearmanr(a, b).statistic)}


def track(load: Callable[[Path | None], nn.Module], points: Sequence[Path], cfg: Config, train, test,
          mean, std, protocols: Sequence[str], *, n_train: int, device: torch.device,
          precision: str, size: int, progress: bool = False) -> dict:
    """Held-out loss and `protocols` at the initialisation and at each checkpoint of `points`.

    load(checkpoint folder, or None for the initialisation) -> the method with those weights.
    train, test: the labelled ImageSets of the protocols (subsets already taken); the loss is
    measured on `cfg.eval.loss_images` images of `test`. n_train: images the run trained on
    (its data.subset), for the schedules a loss may read from its Progress.

    Returns {"points": [{"step", "epoch", "checkpoint", "heldout": {"loss", metrics...},
    protocol: {"top1", ["best_layer"]}}], "correlation": {protocol: {"pearson", "spearman"}},
    "protocol": {protocol: the last point's protocol line}, "loss_images"}.
    """
    steps_per_epoch, total_steps = run_length(n_train, cfg.trainer.epochs, cfg.trainer.batch_size)
    steps_per_epoch = max(1, steps_per_epoch)
    n_loss = min(cfg.eval.loss_images, len(test))
    pick = stratified_subset(test.labels, 2, total=n_loss)[0] if test.labels is not None else \
        torch.arange(n_loss)
    loss_images = test.images[pick.to(test.images.device)]
    views = build_view_set(view_configs(cfg), mean, std)
    rows, lines = [], {}
    for ckpt in [None, *points]:
        step = 0 if ckpt is None else int(ckpt.name[len(PREFIX):])
        method = load(ckpt).to(device)
        heldout = heldout_loss(method, views, loss_images, Progress(step, steps_per_epoch, total_steps),
                               batch_size=cfg.eval.batch_size, device=device, precision=precision)
        cache = FeatureCache(method.backbone, mean, std, batch_size=cfg.eval.batch_size, device=device,
                             precision=precision, progress=progress)
        results = evaluate(cache, train, test, cfg.eval, protocols, size=size, progress=progress)
        row = {"step": step, "epoch": step / steps_per_epoch,
               "checkpoint": "random init" if ckpt is None else str(ckpt), "heldout": heldout}
        for p, res in results.items():
            row[p] = {"top1": res["top1"], **({"best_layer": res["best_layer"]} if "best_layer" in res else {})}
            lines[p] = res["protocol"]
        rows.append(row)
        if progress:
            tops = ", ".join(f"{p} {row[p]['top1']:.2f}%" for p in protocols)
            print(f"step {step}: held-out loss {heldout['loss']:.4f}, {tops}", flush=True)
    losses = [r["heldout"]["loss"] for r in rows]
    return {"points": rows, "loss_images": n_loss, "protocol": lines,
            "correlation": {p: correlations(losses, [r[p]["top1"] for r in rows]) for p in protocols}}
