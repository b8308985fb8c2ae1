"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, 2020. https://arxiv.org/abs/2006.09882

Each crop's projection z (L2-normalised) is scored against K learnable prototypes (a bias-free
linear layer whose rows are kept at unit norm). The codes q of the two global crops are computed
online by Sinkhorn-Knopp over the whole batch, which spreads the batch equally over the
prototypes and so prevents collapse (§3.1, eq. 3); then every other crop must predict them:
the "swapped" prediction loss -sum_k q_k log softmax(z^T c / tau)_k (eq. 1-2). Multi-crop (§3.2):
the codes come from the 2 global crops only; small crops are predictors only. A queue of the
last few thousand projections (§3.1, "Working with small batches"; used from epoch
`epoch_queue_starts` once full) gives Sinkhorn more samples when the batch is small. The
prototypes are frozen during the first iterations ("freeze_prototypes_niters"). Details follow
the official code (facebookresearch/swav: main_swav.py train() and distributed_sinkhorn,
src/resnet50.py's projection head and prototypes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import gather, rank, world_size
from selfsup.parts.heads import mlp
from selfsup.parts.multicrop import encode_crops
from selfsup.parts.sinkhorn import sinkhorn
from selfsup.protocol import Output, Progress


@dataclass
class SwAVConfig:
    """name: registry key.
    proj_hidden / proj_dim: the projection head Linear-BN-ReLU-Linear (2048 / 128: main_swav.py's
        hidden_mlp and feat_dim; solo-learn's CIFAR recipe uses the same).
    n_prototypes: K (3000, main_swav.py's nmb_prototypes, and solo-learn's CIFAR recipe).
    temperature: tau of the swapped prediction's softmax (0.1, §3.1).
    epsilon / sinkhorn_iterations: the entropy weight and number of rounds of Sinkhorn-Knopp (0.05
        and 3, main_swav.py's defaults).
    queue_length: projections kept per global crop for Sinkhorn, over all ranks together (0: no
        queue, main_swav.py's default; 3840 in its small-batch runs and solo-learn's CIFAR recipe).
    epoch_queue_starts: the epoch from which the queue is filled (15, main_swav.py; solo-learn's
        CIFAR recipe waits 50); it is used once full. May be fractional.
    freeze_prototypes_niters: optimizer steps from the start during which the prototypes take no
        update (313, main_swav.py's default: one epoch of ImageNet at batch 4096).
    """

    name: str = "swav"
    proj_hidden: int = 2048
    proj_dim: int = 128
    n_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_length: int = 0
    epoch_queue_starts: float = 15.0
    freeze_prototypes_niters: int = 313

    # A queue of 2 tiny batches that starts at once, and prototypes frozen for 3 steps, so that the
    # registry-wide tests (resume, 2-process DDP) go through both.
    tiny = ("method.proj_hidden=32", "method.proj_dim=16", "method.n_prototypes=32",
            "method.queue_length=128", "method.epoch_queue_starts=0",
            "method.freeze_prototypes_niters=3")

    def __post_init__(self):
        for name in ("proj_hidden", "proj_dim", "n_prototypes", "sinkhorn_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("temperature", "epsilon"):
            if getattr(self, name) <= 0:
                raise ValueError(f"method.{name} must be positive, got {getattr(self, name)}")
        for name in ("queue_length", "epoch_queue_starts", "freeze_prototypes_niters"):
            if getattr(self, name) < 0:
                raise ValueError(f"method.{name} must be >= 0, got {getattr(self, name)}")


def swav_loss(scores: Tensor, codes: Tensor, temperature: float) -> Tensor:
    """The swapped prediction loss (eq. 1-2, main_swav.py's multi-crop form), averaged.

    scores: [V, B, K] prototype scores z^T c of every crop (the 2 global crops first).
    codes: [2, B, K] Sinkhorn codes of the 2 global crops (rows sum to 1), without gradient.
    For each global crop i and each crop v != i: the batch mean of -sum_k q(i)_k log p(v)_k, with
    p(v) = softmax(scores(v) / temperature); averaged over the V - 1 crops of each i, then over i.
    """
    v = scores.shape[0]
    if codes.shape[0] != 2 or codes.shape[1:] != scores.shape[1:] or v < 2:
        raise ValueError(f"need codes [2, B, K] and scores [V>=2, B, K], got "
                         f"{tuple(codes.shape)} and {tuple(scores.shape)}")
    log_p = F.log_softmax(scores.float() / temperature, dim=-1)  # [V, B, K]
    ce = -torch.einsum("ibk,vbk->iv", codes.float(), log_p) / scores.shape[1]  # [2, V]
    pairs = ~torch.eye(2, v, dtype=torch.bool, device=ce.device)  # v == i predicts nothing
    return ce[pairs].mean()


class SwAV(nn.Module):
    config_class = SwAVConfig

    def __init__(self, cfg: SwAVConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, 2, bn=True)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.n_prototypes, bias=False)
        self.normalize_prototypes()
        # Newest first, as the official queue; zeros until filled. One per global crop.
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_dim))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Unit rows (main_swav.py normalises them before every forward, i.e. after every step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def queue_start(self, progress: Progress) -> int:
        """The first step that pushes into the queue: the first of epoch `epoch_queue_starts`."""
        return math.ceil(self.cfg.epoch_queue_starts * progress.steps_per_epoch - 1e-9)

    def queue_in_use(self, progress: Progress, global_batch: int) -> bool:
        """Whether this step's codes use the queue: it is, once full (main_swav.py uses it from
        when its last row is filled). A function of the step alone, so no host sync."""
        pushed = max(0, progress.step - self.queue_start(progress)) * global_batch
        return self.cfg.queue_length > 0 and pushed >= self.cfg.queue_length

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError("SwAV takes 2 global crops of one size, then any small crops: set "
                             "views.n_views=2 (plus extra_views entries for small crops)")
        v, b = len(views), views[0].shape[0]
        z = F.normalize(self.projector(encode_crops(self.backbone, views)).float(), dim=1)  # [V*B, d]
        # Scores in float32: Sinkhorn divides them by epsilon = 0.05 before exponentiating.
        with torch.autocast(z.device.type, enabled=False):
            scores = F.linear(z, self.prototypes.weight.float()).unflatten(0, (v, b))  # [V, B, K]
        use_queue = self.queue_in_use(progress, b * world_size())
        codes = []
        with torch.no_grad():
            w = self.prototypes.weight.float()
            for i in range(2):
                s = scores[i].detach()
                if use_queue:
                    # Every rank holds the global queue; each adds its own share of the rows, so
                    # that the global Sinkhorn sees every queued projection once, as the
                    # official per-rank queues of queue_length / world_size rows do.
                    n, r, ws = self.cfg.queue_length, rank(), world_size()
                    mine = self.queue[i, r * n // ws:(r + 1) * n // ws].float()
                    s = torch.cat([mine @ w.T, s])
                codes.append(sinkhorn(s, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-b:])
            codes = torch.stack(codes)  # [2, B, K]
        loss = swav_loss(scores, codes, self.cfg.temperature)
        with torch.no_grad():
            entropy = -(codes * codes.clamp_min(1e-30).log()).sum(-1).mean()
        state = {"queue": z[: 2 * b].detach().unflatten(0, (2, b)).transpose(0, 1)} \
            if self.cfg.queue_length else None  # [B, 2, d]
        return Output(loss, {"code_entropy": entropy, "queue_in_use": float(use_queue)}, state)

    def on_after_backward(self, progress: Progress) -> None:
        # main_swav.py cancels the prototypes' gradients during the first iterations; dropping
        # them also skips their optimizer step (and weight decay).
        if progress.step < self.cfg.freeze_prototypes_niters:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def on_step_end(self, progress: Progress, state: dict[str, Tensor]) -> None:
        self.normalize_prototypes()
        if self.cfg.queue_length and progress.step >= self.queue_start(progress):
            keys = gather(state["queue"]).transpose(0, 1).to(self.queue.dtype)  # [2, W*B, d]
            self.queue.copy_(torch.cat([keys, self.queue], dim=1)[:, : self.cfg.queue_length])
