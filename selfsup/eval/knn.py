"""Weighted k-NN classification on cached features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", https://arxiv.org/abs/1805.01978, Sec. 3.4).

Each test point takes its k most cosine-similar training points; neighbour j votes for its class
with weight exp(s_j / T). The common CIFAR protocol (InstDisc, then SimCLR/MoCo/DINO codebases)
is k=200, T=0.1. Ties between classes with equal votes go to the lowest class index; ties in
similarity at the k-th neighbour are broken by `torch.topk` (in practice only exact duplicates).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class KNNConfig:
    k: int = 200  # neighbours per test point; clipped to the training-set size
    temperature: float = 0.1  # T in the vote weight exp(cos / T)
    chunk_size: int = 1024  # test points per matmul; memory is chunk_size x N_train floats

    def __post_init__(self):
        _check_params(self.k, self.temperature, self.chunk_size)


def _check_params(k: int, temperature: float, chunk_size: int) -> None:
    for name, value, ok in (("k", k, k >= 1), ("temperature", temperature, temperature > 0),
                            ("chunk_size", chunk_size, chunk_size >= 1)):
        if not ok:
            bound = "positive" if name == "temperature" else "at least 1"
            raise ValueError(f"eval.knn.{name}={value}: must be {bound}")


def _check(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor | None, who: str) -> None:
    if train_f.dim() != 2 or test_f.dim() != 2 or train_f.shape[1] != test_f.shape[1]:
        raise ValueError(
            f"{who}: features must be [N, D] and [M, D] with the same D, "
            f"got {tuple(train_f.shape)} and {tuple(test_f.shape)}"
        )
    if train_y.shape != (train_f.shape[0],) or (test_y is not None and test_y.shape != (test_f.shape[0],)):
        raise ValueError(
            f"{who}: labels must be 1-D and match the features, got train {tuple(train_y.shape)} "
            f"for {train_f.shape[0]} features"
            + ("" if test_y is None else f", test {tuple(test_y.shape)} for {test_f.shape[0]} features")
        )
    if train_f.shape[0] == 0:
        raise ValueError(f"{who}: the training set is empty")
    if train_y.dtype.is_floating_point or (test_y is not None and test_y.dtype.is_floating_point):
        raise ValueError(f"{who}: labels must be integer class indices, got {train_y.dtype}")


def _num_classes(num_classes: int | None, *labels: Tensor) -> int:
    if any(int(y.min()) < 0 for y in labels if y.numel()):
        raise ValueError("labels must be class indices >= 0 (unlabelled images cannot be evaluated)")
    seen = max(int(y.max()) + 1 for y in labels if y.numel())
    if num_classes is None:
        return seen
    if seen > num_classes:
        raise ValueError(f"labels go up to {seen - 1} but num_classes={num_classes}")
    return num_classes


@torch.no_grad()
def knn_votes(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Normalised class votes [M, C] (each row sums to 1) of the weighted k-NN classifier.

    Arguments as in `knn_accuracy`. Runs on `train_f`'s device.
    """
    _check(train_f, train_y, test_f, None, "knn_votes")
    _check_params(k, temperature, chunk_size)
    device = train_f.device
    c = _num_classes(num_classes, train_y)
    k = min(k, train_f.shape[0])
    train_n = F.normalize(train_f.float(), dim=1)  # [N, D]
    train_y = train_y.to(device)
    votes = torch.empty(test_f.shape[0], c, device=device)  # [M, C]
    for start in range(0, test_f.shape[0], chunk_size):
        q = F.normalize(test_f[start : start + chunk_size].to(device).float(), dim=1)  # [m, D]
        sim, idx = (q @ train_n.T).topk(k, dim=1)  # [m, k]
        # Subtracting each row's max similarity scales its votes by a constant, which changes no
        # ranking, and keeps exp() finite for small T (exp(1 / 0.01) overflows float32).
        w = ((sim - sim[:, :1]) / temperature).exp_()  # [m, k]
        v = votes[start : start + q.shape[0]].zero_()
        v.scatter_add_(1, train_y[idx], w)
        v /= v.sum(1, keepdim=True)
    return votes


@torch.no_grad()
def knn_accuracy(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    features: str | None = None,
) -> dict:
    """Top-1 (and top-5) accuracy in % of weighted k-NN on cached features.

    Args:
        train_f: [N, D] training features (any float dtype); the work runs on their device.
        train_y: [N] int64 training labels.
        test_f: [M, D] test features; test_y: [M] int64 labels.
        k: neighbours per test point, clipped to N.
        temperature: T in the vote weight exp(cos / T).
        num_classes: default max label + 1 over train and test.
        chunk_size: test points per matmul (memory: chunk_size x N floats).
        features: optional description of where the features came from, added to "protocol".

    Returns:
        {"top1", "top5" (if num_classes >= 5), "k" (after clipping), "temperature", "protocol"}.
    """
    _check(train_f, train_y, test_f, test_y, "knn_accuracy")
    c = _num_classes(num_classes, train_y, test_y)
    k_eff = min(k, train_f.shape[0])
    votes = knn_votes(
        train_f, train_y, test_f, k=k_eff, temperature=temperature, num_classes=c, chunk_size=chunk_size
    )  # [M, C]
    result = {**topk_accuracy(votes, test_y.to(votes.device)), "k": k_eff, "temperature": temperature}
    result["protocol"] = (
        f"k-NN: k={k_eff}, T={temperature}, cosine similarity, weighted votes exp(cos/T) "
        f"(Wu et al. 2018), train={train_f.shape[0]} test={test_f.shape[0]}, dim={train_f.shape[1]}, "
        f"classes={c}" + (f", features: {features}" if features else "")
    )
    return result


def topk_accuracy(scores: Tensor, y: Tensor) -> dict:
    """{"top1": %, "top5": % (only with >= 5 classes)} for scores [M, C] and labels [M].

    Classes rank by score, equal scores the lower class index first, so ties are deterministic
    on every device; the true class's rank is counted directly rather than by sorting.
    """
    m, c = scores.shape
    if m == 0:
        raise ValueError("accuracy on an empty test set")
    if not torch.isfinite(scores).all():
        raise ValueError("accuracy: the class scores contain NaN or Inf (non-finite features?)")
    s_y = scores.gather(1, y[:, None])  # [M, 1]
    lower = torch.arange(c, device=scores.device) < y[:, None]  # [M, C]
    rank = (scores > s_y).sum(1) + ((scores == s_y) & lower).sum(1)  # [M], 0 = predicted
    out = {"top1": 100.0 * int((rank == 0).sum()) / m}  # from integer counts: 59.7, not 59.70000029
    if c >= 5:
        out["top5"] = 100.0 * int((rank < 5).sum()) / m
    return out
