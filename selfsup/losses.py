"""The losses that two or more methods share: pure functions with shape notes.

A loss that only one method uses stays in that method's file (MoCo's queue InfoNCE, BYOL's
normalised squared error, MAE's masked MSE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.distributed import gather_with_grad, rank


def cross_entropy_accuracy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy, in float32, and the share of rows whose largest logit is the target's.

    logits: [N, K]; targets: [N] class indices in 0..K-1. Rotation (K = 4 rotations), relative
    patch position (8 neighbours), jigsaw (the permutation set) and masked token prediction
    (BEiT, SplitMask: the vocabulary) are all this loss.
    """
    logits = logits.float()
    return F.cross_entropy(logits, targets), (logits.argmax(dim=1) == targets).float().mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, z_all: Tensor | None = None,
            offset: int = 0) -> tuple[Tensor, Tensor]:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) of two views: `multi_view_nt_xent([z1, z2], ...)`.

    z1, z2: [B, D] embeddings of two views of the same B images. Every other row of z_all is a
    negative of an anchor; the loss is averaged over this process's 2B anchors.
    """
    return multi_view_nt_xent([z1, z2], temperature, z_all, offset)


def multi_view_nt_xent(views: Sequence[Tensor], temperature: float, z_all: Tensor | None = None,
                       offset: int = 0) -> tuple[Tensor, Tensor]:
    """NT-Xent over V >= 2 views of the same B images: every one of the VB embeddings is an
    anchor whose positives are the V - 1 other views of its image (each term a softmax over
    every other row, SupCon's L_out with the image as the label; Khosla et al. 2020, eq. 2);
    with V = 2 it is SimCLR's NT-Xent exactly.

    views: V tensors [B, D] (normalised here).
    z_all: [M, D] normalised embeddings of every process, this one's `cat(views)` at rows
        offset..offset+VB (None: single process, z_all is this process's own).
    Returns the loss, averaged over anchors and their positives, and the share of anchors
    whose most similar other row is one of their positives.
    """
    v, b = len(views), views[0].shape[0]
    if v < 2:
        raise ValueError(f"NT-Xent needs at least 2 views, got {v}")
    z = F.normalize(torch.cat(views).float(), dim=1)  # [VB, D]
    if z_all is None:
        z_all = z
    logits = z @ z_all.float().T / temperature  # [VB, M]
    rows = torch.arange(v * b, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # an anchor is not its own negative
    log_p = F.log_softmax(logits, dim=1)
    own_view, image = rows // b, rows % b
    others = torch.arange(v, device=z.device).expand(v * b, v)
    others = others[others != own_view[:, None]].view(v * b, v - 1)  # the other views' indices
    positives = offset + image[:, None] + b * others  # [VB, V-1] columns of z_all
    loss = -log_p.gather(1, positives).mean()
    acc = (logits.argmax(dim=1, keepdim=True) == positives).any(dim=1).float().mean()
    return loss, acc


def global_nt_xent(views: Sequence[Tensor], temperature: float) -> tuple[Tensor, Tensor]:
    """`multi_view_nt_xent` with the negatives of the global batch: every process's embeddings
    are gathered (gradients flow back to each process's own), so a run on W processes computes
    the loss of one process with the whole batch. views: this process's V tensors [B, D]."""
    z = F.normalize(torch.cat(list(views)).float(), dim=1)  # [VB, D]
    return multi_view_nt_xent(views, temperature, gather_with_grad(z), offset=rank() * z.shape[0])


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor,
              student_temp: float, teacher_temp: float) -> tuple[Tensor, Tensor]:
    """The DINO loss (eq. 3 summed over crop pairs, Algorithm 1), averaged over the pairs: DINO's
    loss and iBOT's [CLS] loss (iBOT's student global crops are the masked ones).

    student: [V, B, K] logits of the student on all V crops (the 2 global crops first).
    teacher: [2, B, K] logits of the teacher on the 2 global crops.
    center: [K] or [1, K], subtracted from the teacher logits before sharpening.
    For each teacher crop i and each student crop v != i: the cross-entropy
    -sum_k P_t(i)_k log P_s(v)_k, averaged over the batch; then averaged over the 2(V-1) pairs.
    Returns the loss and the teacher's mean entropy (loss - entropy is the mean KL).
    """
    v, b, _ = student.shape
    if teacher.shape[0] != 2 or teacher.shape[1:] != student.shape[1:] or v < 2:
        raise ValueError(f"need teacher [2, B, K] and student [V>=2, B, K], got "
                         f"{tuple(teacher.shape)} and {tuple(student.shape)}")
    log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)  # [V, B, K]
    p_t = F.softmax((teacher.float() - center.float()) / teacher_temp, dim=-1)  # [2, B, K]
    ce = -torch.einsum("ibk,vbk->iv", p_t, log_p_s) / b  # [2, V]: batch-mean cross-entropies
    off_diagonal = ~torch.eye(2, v, dtype=torch.bool, device=ce.device)  # v == i is no pair
    loss = ce[off_diagonal].mean()
    entropy = -(p_t * torch.log(p_t.clamp_min(1e-30))).sum(-1).mean()
    return loss, entropy


def gan_discriminator_loss(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's loss of the original GAN (Goodfellow et al. 2014, eq. 1), in float32:
    binary cross-entropy with real images labelled 1 and generated ones 0, each term averaged
    over its batch, then summed (DCGAN's `errD = errD_real + errD_fake`). real: [B] or [B, 1]
    logits on real images; fake: [B'] or [B', 1] logits on generated ones. Returns the loss and
    the discriminator's accuracy (a logit above 0 calls an image real)."""
    real, fake = real.float().flatten(), fake.float().flatten()
    loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    accuracy = torch.cat([real > 0, fake <= 0]).float().mean()
    return loss, accuracy


def gan_generator_loss(fake: Tensor) -> Tensor:
    """The generator's non-saturating loss (Goodfellow et al. 2014, §3): -log D(G(z)), binary
    cross-entropy of the discriminator's logits on generated images against the label real.
    fake: [B] or [B, 1] logits."""
    fake = fake.float().flatten()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
