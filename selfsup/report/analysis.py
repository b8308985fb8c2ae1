"""What the report computes from a run's encoder and data: nearest-neighbour retrievals, a 2-D
embedding map, the health of the final features, and (ViT) attention maps. Every pick is seeded,
so the same run gives the same report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data import ImageSet
from selfsup.eval.features import FeatureCache, frozen_eval
from selfsup.eval.health import embedding_health
from selfsup.eval.subsets import stratified_subset
from selfsup.report.settings import ReportConfig
from selfsup.views import eval_transform


@dataclass
class Analysis:
    """queries: uint8 [Q, C, H, W]; neighbours: uint8 [Q, K, C, H, W] with `same` [Q, K] (same
    class as the query) and `similarity` [Q, K]; map_xy: [M, 2] t-SNE coordinates of the map's
    test images, `map_labels` [M]; health: `embedding_health` of those images' features;
    attention: (images uint8 [A, C, H, W], maps [A, h, w]) for a ViT, else None."""

    queries: Tensor
    neighbours: Tensor
    same: Tensor
    similarity: Tensor
    map_xy: np.ndarray
    map_labels: np.ndarray
    classes: list[str]
    health: dict
    bank_size: int
    attention: tuple[Tensor, Tensor] | None


def _pick(n: int, k: int | None, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: k or n]


def embedding_map(features: Tensor, seed: int = 0) -> np.ndarray:
    """[M, D] -> [M, 2]: t-SNE (scikit-learn; perplexity 30 or less for few points) of the
    L2-normalised features, after PCA to 50 dimensions as its documentation advises."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = F.normalize(features.float(), dim=1).cpu().numpy()
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


@torch.no_grad()
def analyse(backbone: nn.Module, train: ImageSet, test: ImageSet, mean, std, size: int,
            cfg: ReportConfig, device: torch.device, precision: str = "fp32",
            batch_size: int = 256, seed: int = 0) -> Analysis:
    """The report's computations for a labelled train/test pair."""
    cache = FeatureCache(backbone, mean, std, batch_size=batch_size, device=device, precision=precision)
    bank = train.subset(_pick(len(train), cfg.bank, seed)) if cfg.bank and cfg.bank < len(train) else train
    shown = test.subset(stratified_subset(test.labels, seed, total=min(cfg.map_images, len(test)))[0]) \
        if cfg.map_images < len(test) else test
    bank_f = F.normalize(cache.features(bank.images, None, size), dim=1)
    test_f = cache.features(shown.images, None, size)

    q = _pick(len(shown), cfg.queries, seed + 1)
    sim = F.normalize(test_f[q], dim=1) @ bank_f.T  # [Q, N_bank]
    top, idx = sim.topk(min(cfg.neighbours, len(bank)), dim=1)
    idx = idx.cpu()
    same = bank.labels[idx] == shown.labels[q].unsqueeze(1)

    attention = None
    if hasattr(backbone, "attention_maps"):
        a = shown.images[_pick(len(shown), cfg.attention_images, seed + 2)]
        with frozen_eval(backbone):
            maps = backbone.attention_maps(eval_transform(a.to(device), mean, std, size)).mean(1)
        attention = (a, maps.float().cpu())
    return Analysis(
        queries=shown.images[q], neighbours=bank.images[idx], same=same, similarity=top.cpu(),
        map_xy=embedding_map(test_f, seed), map_labels=shown.labels.numpy(),
        classes=list(train.classes or [str(c) for c in range(int(train.labels.max()) + 1)]),
        health=embedding_health(test_f), bank_size=len(bank), attention=attention)
