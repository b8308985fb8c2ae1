"""MoCo v2: Improved Baselines with Momentum Contrastive Learning.

Chen, Fan, Girshick, He, 2020. https://arxiv.org/abs/2003.04297
(MoCo v1: He, Fan, Wu, Xie, Girshick, 2019. https://arxiv.org/abs/1911.05722)

A query encoder (backbone + 2-layer MLP head, v2's change over v1) embeds one view; a key encoder,
an exponential moving average of the query encoder (v1 eq. 2), embeds the other. InfoNCE (v1
eq. 1) asks each query to pick out its own key among the keys of earlier steps, kept in a
first-in-first-out queue, so the number of negatives is independent of the batch size. After the
optimizer step the step's keys are enqueued and the key encoder takes its momentum step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather, rank, world_size
from selfsup.parts.heads import mlp
from selfsup.parts.queue import FeatureQueue
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Output, Progress


@dataclass
class MoCoV2Config:
    """name: registry key. temperature: tau of InfoNCE (0.2, the v2 paper's §3). queue_size: number
    of negative keys K (65536 for ImageNet as in v1 §4; a CIFAR run wants a few thousand).
    momentum: key-encoder EMA momentum m (0.999, v1 §3.2). momentum_end: null keeps m constant, as
    the paper does; a value moves m to it along a half cosine over the run (solo-learn's CIFAR
    setting: 0.99 -> 0.999; 1.0 as in BYOL). proj_hidden / proj_dim: the head
    Linear-ReLU-Linear, no BN (v2 §2: 2048 hidden for ResNet-50, 128 out). symmetric: also use the
    second view as query against the first view's key and average the two losses (solo-learn does;
    the paper does not; twice the work per step). shuffle_bn: shuffle the key batch across
    processes before the key encoder (v1 §3.3), so that BN statistics cannot leak which key is the
    positive; only has an effect under DDP with per-process BN."""

    name: str = "mocov2"
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    momentum_end: Optional[float] = None
    proj_hidden: int = 2048
    proj_dim: int = 128
    symmetric: bool = False
    shuffle_bn: bool = True

    tiny = ("method.proj_hidden=32", "method.proj_dim=16", "method.queue_size=256")

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        if self.queue_size < 1:
            raise ValueError(f"method.queue_size must be at least 1, got {self.queue_size}")
        for field in ("momentum", "momentum_end"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"method.{field} must be in [0, 1], got {value}")
        for field in ("proj_hidden", "proj_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of v1 eq. 1, averaged over the B queries.

    q: [B, D] queries; k: [B, D] their positive keys (row i is the key of query i); both are
    normalised here. queue: [K, D] normalised negative keys.
    logits = [q.k+, q.queue] / T: [B, 1 + K], the positive in column 0.
    Returns the loss and the share of queries whose positive has the highest similarity.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    l_neg = q @ queue.float().T  # [B, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # [B, 1 + K]
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(dim=1) == 0).float().mean()
    return loss, acc


def shuffle_indices(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A permutation of the global batch [n] drawn from `seed` (the same on every process, with no
    communication), and its inverse."""
    g = torch.Generator(device=device).manual_seed(seed)
    perm = torch.randperm(n, generator=g, device=device)
    return perm, torch.argsort(perm)


@torch.no_grad()
def shuffled_keys(encoder: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """`encoder(x)` [B, D] with the global batch shuffled across processes first and the outputs
    unshuffled after (v1 §3.3, the official `_batch_shuffle_ddp`): each process's BN sees a random
    subset of the global batch, not the images whose queries it holds. On one process it is plain
    `encoder(x)`: shuffling inside one BN batch changes nothing."""
    w = world_size()
    if w == 1:
        return encoder(x)
    b, r = x.shape[0], rank()
    perm, inverse = shuffle_indices(w * b, seed, x.device)
    x_all = gather(x)  # [W*B, ...]
    k = encoder(x_all[perm.view(w, b)[r]])  # row j of this chunk is image perm[r*B + j]
    return gather(k)[inverse.view(w, b)[r]]  # [B, D]: this process's own images, in order


class MoCoV2(nn.Module):
    config_class = MoCoV2Config

    def __init__(self, cfg: MoCoV2Config, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, 2, bn=False)
        # The key encoder: teacher[0] follows the backbone, teacher[1] the projector.
        self.teacher = EMATeacher(backbone, self.projector, momentum=cfg.momentum,
                                  momentum_end=cfg.momentum_end)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    def _contrast(self, x_q: torch.Tensor, x_k: torch.Tensor, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.projector(self.backbone(x_q))  # [B, D]
        with torch.no_grad():
            k = shuffled_keys(self.teacher, x_k, seed) if self.cfg.shuffle_bn else self.teacher(x_k)
        k = F.normalize(k.float(), dim=1)  # [B, D]
        loss, acc = moco_infonce(q, k, self.queue.features, self.cfg.temperature)
        return loss, acc, k

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"MoCo v2 takes 2 views, got {len(views)}: set views.n_views=2")
        x1, x2 = views
        # The shuffle seed only has to agree across processes; the step makes it differ per step.
        seed = 2 * progress.step
        loss, acc, k2 = self._contrast(x1, x2, seed)
        if not self.cfg.symmetric:
            return Output(loss, {"contrast_acc": acc}, {"keys": k2})
        loss_b, acc_b, k1 = self._contrast(x2, x1, seed + 1)
        return Output((loss + loss_b) / 2, {"contrast_acc": (acc + acc_b) / 2},
                      {"keys": torch.cat([k2, k1])})

    @torch.no_grad()
    def on_step_end(self, progress: Progress, state: dict[str, torch.Tensor]) -> None:
        # The step's keys are enqueued only now, after the loss has used the older ones.
        self.queue.push(state["keys"])
        self.teacher.update(progress)
