"""The evaluation protocols on a frozen backbone, from images to a stated top-1: features are
extracted once per split and then reused by k-NN and the linear probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe


def features(backbone: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
             ecfg, size: int | None, device: torch.device, precision: str,
             progress: bool = False) -> torch.Tensor:
    """Pooled features (or those of `ecfg.layer`) of uint8 images, resized to the training view
    size when it differs from the stored size (a ViT's position embeddings fix its input size)."""
    if size is not None and images.shape[-1] != size:
        images = torch.cat([
            F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
            for chunk in images.split(4096)])
    layers = [ecfg.layer] if ecfg.layer else None
    out = extract_features(backbone, images, mean, std, batch_size=ecfg.batch_size, device=device,
                           layers=layers, precision=precision, progress=progress)
    return out[ecfg.layer] if layers else out


def _described(ecfg) -> str:
    return f"{ecfg.layer} output, pooled" if ecfg.layer else "pooled backbone output"


def knn_eval(backbone, train, test, mean, std, ecfg, size=None, device=None, precision="fp32",
             progress=False) -> dict:
    """k-NN top-1 of `test` against the features of `train` (both ImageSets with labels)."""
    device = device or next(backbone.parameters()).device
    tr = features(backbone, train.images, mean, std, ecfg, size, device, precision, progress)
    te = features(backbone, test.images, mean, std, ecfg, size, device, precision, progress)
    k = ecfg.knn
    return knn_accuracy(tr, train.labels.to(device), te, test.labels.to(device), k=k.k,
                        temperature=k.temperature, num_classes=train.num_classes,
                        chunk_size=k.chunk_size, features=_described(ecfg))


def linear_eval(backbone, train, test, mean, std, ecfg, size=None, device=None, precision="fp32",
                seed=0, progress=False) -> dict:
    """Linear-probe top-1 on cached features of `train`, tested on `test`."""
    device = device or next(backbone.parameters()).device
    tr = features(backbone, train.images, mean, std, ecfg, size, device, precision, progress)
    te = features(backbone, test.images, mean, std, ecfg, size, device, precision, progress)
    return linear_probe(tr, train.labels.to(device), te, test.labels.to(device), cfg=ecfg.linear,
                        num_classes=train.num_classes, seed=seed, progress=progress,
                        features=_described(ecfg))
