"""The losses that two or more methods share: pure functions with shape notes.

A loss that only one method uses stays in that method's file (MoCo's queue InfoNCE, BYOL's
normalised squared error, MAE's masked MSE).
"""

from __future__ import annotations

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
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1), averaged over this process's 2B anchors.

    z1, z2: [B, D] embeddings of two views of the same B images (normalised here).
    z_all: [M, D] normalised embeddings of every process, this one's `cat([z1, z2])` at rows
        offset..offset+2B (None: single process, z_all is this process's own).
    Every other row of z_all is a negative of an anchor. Returns the loss and the share of
    anchors whose positive has the highest similarity.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
    if z_all is None:
        z_all = z
    logits = z @ z_all.float().T / temperature  # [2B, M]
    rows = torch.arange(2 * b, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # an anchor is not its own negative
    positives = (rows + b) % (2 * b) + offset  # view 1 of image i pairs with view 2 of image i
    loss = F.cross_entropy(logits, positives)
    acc = (logits.argmax(dim=1) == positives).float().mean()
    return loss, acc


def global_nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """`nt_xent` with the negatives of the global batch: every process's embeddings are gathered
    (gradients flow back to each process's own), so a run on W processes computes the loss of
    one process with the whole batch. z1, z2: [B, D] this process's pairs."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
    return nt_xent(z1, z2, temperature, gather_with_grad(z), offset=rank() * 2 * z1.shape[0])


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
