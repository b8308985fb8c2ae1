"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.

Bardes, Ponce, LeCun, 2022 (ICLR). https://arxiv.org/abs/2105.04906

Two views of every image go through the same backbone and expander (the projector); the loss on
the two batches of embeddings has three terms: invariance, the mean squared distance between
the two embeddings of an image; variance, a hinge that keeps the standard deviation of every
embedding dimension over the batch above 1 (no collapse to a point); covariance, the squared
off-diagonal covariances, which decorrelate the dimensions (no collapse to a few directions). The
branches share nothing else: no negatives, no predictor, no momentum encoder, no stop-gradient,
no normalisation of the embeddings. Details follow the official code (facebookresearch/vicreg,
main_vicreg.py): an expander of Linear-BN-ReLU blocks and a bias-free last linear, each view
through backbone and expander on its own, weights 25 / 25 / 1, std computed as sqrt(var + 1e-4)
with the unbiased variance, covariances divided by N - 1 and their squares summed over the
off-diagonal and divided by D, the variance term averaged over the two branches and the covariance
term summed over them.

Multi-process training: as in the official code (FullGatherLayer), the variance and covariance
terms are computed on the embeddings of the global batch, gathered from every process with
gradients flowing back to each process's own rows (`selfsup.distributed.gather_with_grad`), while
the invariance term is per image and stays local; the BatchNorms of the expander span the global
batch through the trainer's SyncBatchNorm on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import gather_with_grad
from selfsup.parts.heads import mlp
from selfsup.protocol import Output, Progress


@dataclass
class VICRegConfig:
    """name: registry key. proj_hidden / proj_dim / proj_layers: the expander, (Linear-BN-ReLU) x
    (proj_layers - 1) then a bias-free Linear (8192-8192-8192 in the paper and main_vicreg.py's
    `--mlp`; solo-learn's CIFAR recipe uses 2048-2048-2048). sim_coeff / std_coeff / cov_coeff:
    lambda, mu, nu, the weights of the invariance, variance and covariance terms (25 / 25 / 1, the
    paper's and the official defaults). std_target: gamma, the standard deviation the hinge asks of each
    dimension (1). eps: added to the variance under the square root (1e-4)."""

    name: str = "vicreg"
    proj_hidden: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    std_target: float = 1.0
    eps: float = 1e-4

    tiny = ("method.proj_hidden=32", "method.proj_dim=16")

    def __post_init__(self):
        for field in ("proj_hidden", "proj_dim", "proj_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"method.{field} must be at least 1, got {getattr(self, field)}")
        for field in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(self, field) < 0:
                raise ValueError(f"method.{field} must be >= 0, got {getattr(self, field)}")
        for field in ("std_target", "eps"):
            if getattr(self, field) <= 0:
                raise ValueError(f"method.{field} must be positive, got {getattr(self, field)}")


def invariance_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """The invariance term s(Z, Z') as the official code computes it: the mean over images and dimensions of
    the squared difference (the paper writes the sum over dimensions; the weight 25 goes with the
    code's mean). z1, z2: [B, D] the two embeddings of the same B images. Returns 0-dim."""
    return F.mse_loss(z1.float(), z2.float())


def variance_loss(z: Tensor, std_target: float = 1.0, eps: float = 1e-4) -> Tensor:
    """The variance term v(Z): mean over dimensions of max(0, gamma - sqrt(Var(z_j) + eps)), with the
    unbiased variance over the batch. z: [N, D], N >= 2. Returns 0-dim."""
    std = torch.sqrt(z.float().var(dim=0) + eps)  # [D]
    return F.relu(std_target - std).mean()


def covariance_loss(z: Tensor) -> Tensor:
    """The covariance term c(Z): sum of the squared off-diagonal entries of the covariance matrix
    C(Z) = (Z - mean)^T (Z - mean) / (N - 1), divided by D. z: [N, D], N >= 2. Returns 0-dim."""
    with torch.autocast(z.device.type, enabled=False):  # which would run the product in bf16
        z = z.float()
        z = z - z.mean(dim=0)
        cov = z.T @ z / (z.shape[0] - 1)  # [D, D]
    off = cov - torch.diag_embed(torch.diagonal(cov))  # the diagonal subtracted exactly
    return off.pow(2).sum() / z.shape[1]


def vicreg_loss(z1: Tensor, z2: Tensor, z1_all: Tensor, z2_all: Tensor, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, std_target: float = 1.0,
                eps: float = 1e-4) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss: lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z')), the official code's
    averaging of the variance term over the two branches included.

    z1, z2: [B, D] this process's embeddings of the two views (the invariance term).
    z1_all, z2_all: [N, D] the embeddings of the global batch, every process's rows (the variance
        and covariance terms); z1, z2 themselves on one process.
    Returns the loss and its three unweighted terms {"inv", "var", "cov"}.
    """
    inv = invariance_loss(z1, z2)
    var = (variance_loss(z1_all, std_target, eps) + variance_loss(z2_all, std_target, eps)) / 2
    cov = covariance_loss(z1_all) + covariance_loss(z2_all)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov, {"inv": inv, "var": var, "cov": cov}


class VICReg(nn.Module):
    config_class = VICRegConfig

    def __init__(self, cfg: VICRegConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        # The official expander's hidden linears have biases that their BN cancels (`mlp` leaves
        # them out); its last linear is bias-free, and a bias there would get no gradient (every
        # term sees only differences of embeddings or centred ones), so it is left out too.
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers)
        last = self.projector[-1]
        self.projector[-1] = nn.Linear(last.in_features, last.out_features, bias=False)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        if len(views) != 2:
            raise ValueError(f"VICReg takes exactly 2 views, got {len(views)}: use views.n_views=2, "
                             "or views.n_views=1 with one extra_views entry")
        # Each view on its own, as in the official code: BatchNorm statistics are per view.
        z1, z2 = (self.projector(self.backbone(v)) for v in views)  # 2 x [B, D]
        c = self.cfg
        loss, terms = vicreg_loss(z1, z2, gather_with_grad(z1), gather_with_grad(z2), c.sim_coeff,
                                  c.std_coeff, c.cov_coeff, c.std_target, c.eps)
        return Output(loss, {k: v.detach() for k, v in terms.items()})
