"""The evaluation protocols on a frozen backbone, from images to a stated top-1: features are
extracted once per split and then reused by k-NN and the linear probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe


def features(backbone: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
             ecfg, size: int | None, device: torch.device | None, precision: str,
             progress: bool = False) -> torch.Tensor:
    """Pooled features (or those of `ecfg.layer`) of uint8 images, resized to `size` when it
    differs from the stored size (the training view size, by default: a ViT's patch grid and a
    CNN's receptive fields were trained at it)."""
    layers = [ecfg.layer] if ecfg.layer else None
    out = extract_features(backbone, images, mean, std, batch_size=ecfg.batch_size, device=device,
                           layers=layers, precision=precision, progress=progress, size=size)
    return out[ecfg.layer] if layers else out


def _described(ecfg) -> str:
    return f"{ecfg.layer} output, pooled" if ecfg.layer else "pooled backbone output"


def knn_eval(backbone, train, test, mean, std, ecfg, size=None, device=None, precision="fp32",
             progress=False) -> dict:
    """k-NN top-1 of `test` against the features of `train` (both ImageSets with labels)."""
    tr = features(backbone, train.images, mean, std, ecfg, size, device, precision, progress)
    te = features(backbone, test.images, mean, std, ecfg, size, device, precision, progress)
    k = ecfg.knn
    return knn_accuracy(tr, train.labels.to(tr.device), te, test.labels.to(tr.device), k=k.k,
                        temperature=k.temperature, num_classes=train.num_classes,
                        chunk_size=k.chunk_size, features=_described(ecfg))


def linear_eval(backbone, train, test, mean, std, ecfg, size=None, device=None, precision="fp32",
                seed=0, progress=False) -> dict:
    """Linear-probe top-1 on cached features of `train`, tested on `test`."""
    tr = features(backbone, train.images, mean, std, ecfg, size, device, precision, progress)
    te = features(backbone, test.images, mean, std, ecfg, size, device, precision, progress)
    return linear_probe(tr, train.labels.to(tr.device), te, test.labels.to(tr.device), cfg=ecfg.linear,
                        num_classes=train.num_classes, seed=seed, progress=progress,
                        features=_described(ecfg))
