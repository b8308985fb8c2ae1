"""Cheap patch tokenizers for BEiT-style masked token prediction.

BEiT (Bao et al. 2021, https://arxiv.org/abs/2106.08254) predicts, for each masked patch, the id
that a tokenizer gives the original patch; its tokenizer is DALL-E's discrete VAE, trained on
250M images. SplitMask (El-Nouby et al. 2021, https://arxiv.org/abs/2112.10740, §4.2 and
table 2) finds that far cheaper tokenizers built from the target data alone do about as well:
k-means centroids of patches, patches sampled at random from the data, even random vectors.
Those three are here:

- "kmeans": `vocab_size` k-means centroids of patches sampled from the training views;
- "patches": `vocab_size` patches sampled from the training views;
- "random": `vocab_size` vectors drawn from a standard normal.

A patch (p*p*C normalised pixels, `patchify`'s order) gets the id of the codebook entry with the
largest inner product ("dot") or the nearest one ("nearest", Euclidean). The codebook is built
once, from the data, when training starts, and is a buffer of the method, so it is saved with
every checkpoint and the run reads it back rather than rebuilding it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from selfsup import distributed as dist
from selfsup.backbones.vit import patchify

KINDS = ("kmeans", "patches", "random")
ASSIGN = ("dot", "nearest")


def check_tokenizer(kind: str, assign: str, vocab_size: int) -> None:
    """Raise ValueError naming the bad `method.*` tokenizer setting."""
    if kind not in KINDS:
        raise ValueError(f"method.tokenizer must be one of {', '.join(KINDS)}, got {kind!r}")
    if assign not in ASSIGN:
        raise ValueError(f"method.assign must be one of {', '.join(ASSIGN)}, got {assign!r}")
    if vocab_size < 2:
        raise ValueError(f"method.vocab_size must be at least 2, got {vocab_size}")


class PatchTokenizer(nn.Module):
    """kind, assign, vocab_size: as in the module docstring. patch_dim: p*p*C."""

    def __init__(self, kind: str, assign: str, vocab_size: int, patch_dim: int):
        super().__init__()
        check_tokenizer(kind, assign, vocab_size)
        self.kind, self.assign = kind, assign
        self.register_buffer("codebook", torch.zeros(vocab_size, patch_dim))  # [V, P]
        self.register_buffer("built", torch.zeros((), dtype=torch.bool))

    @classmethod
    def for_vit(cls, cfg: "TokenizerConfig", vit: nn.Module) -> "PatchTokenizer":
        """The tokenizer of `cfg` for the patches of a ViT (p*p*C pixels each)."""
        return cls(cfg.tokenizer, cfg.assign, cfg.vocab_size, vit.patch_size ** 2 * vit.in_channels)

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    @torch.no_grad()
    def build(self, patches: Tensor, seed: int) -> None:
        """Fill the codebook from `patches` [N, P] (sampled from the training views), seeded.

        Every process builds the same codebook from the same sample; rank 0's is then broadcast
        so that floating-point differences between machines cannot split the vocabulary."""
        v, p = self.codebook.shape
        if patches.dim() != 2 or patches.shape[1] != p:
            raise ValueError(f"tokenizer expects patches [N, {p}], got {tuple(patches.shape)}")
        if self.kind != "random" and patches.shape[0] < v:
            raise ValueError(f"tokenizer {self.kind!r} needs at least vocab_size={v} patches to "
                             f"build from, got {patches.shape[0]}: lower method.vocab_size")
        g = torch.Generator().manual_seed(seed)
        x = patches.detach().float().cpu()
        if self.kind == "random":
            book = torch.randn(v, p, generator=g)
        elif self.kind == "patches":
            book = x[torch.randperm(len(x), generator=g)[:v]]
        else:
            book = kmeans(x, v, seed)
        self.codebook.copy_(book.to(self.codebook.device))
        if dist.is_distributed():
            torch.distributed.broadcast(self.codebook, 0)
        self.built.fill_(True)

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        """patches: [B, L, P] -> token ids [B, L] (int64)."""
        if not bool(self.built):
            raise RuntimeError("the tokenizer's codebook has not been built: training builds it "
                               "from the data at its first step (Method.init_from_data)")
        book = self.codebook.float()
        scores = patches.float() @ book.T  # [B, L, V]
        if self.assign == "nearest":  # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
            scores = scores - 0.5 * (book * book).sum(dim=1)
        return scores.argmax(dim=-1)


def kmeans(x: Tensor, k: int, seed: int) -> Tensor:
    """k centroids [k, P] of x [N, P] by scikit-learn's k-means (k-means++ seeding, Lloyd),
    seeded; one initialisation, which on tens of thousands of patches takes a few seconds."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed)
    km.fit(x.numpy().astype(np.float32))
    return torch.from_numpy(km.cluster_centers_).float()


@dataclass
class TokenizerConfig:
    """The tokenizer settings that BEiT and SplitMask share (their configs extend this one).

    tokenizer: kmeans | patches | random (see the module docstring). assign: dot | nearest.
    vocab_size: codebook entries (DALL-E's is 8192 for ImageNet; a 32 px CIFAR patch of 4x4x3
        pixels needs far fewer: 512 by default).
    tokenizer_patches: at most this many patches, sampled from the views of
        `tokenizer_images` training images, build the codebook.
    """

    tokenizer: str = "kmeans"
    assign: str = "nearest"
    vocab_size: int = 512
    tokenizer_images: int = 5000
    tokenizer_patches: int = 50000

    def __post_init__(self):
        check_tokenizer(self.tokenizer, self.assign, self.vocab_size)
        if self.tokenizer_images < 1 or self.tokenizer_patches < 1:
            raise ValueError("method.tokenizer_images and tokenizer_patches must be at least 1")


def build_from_views(tokenizer: PatchTokenizer, cfg: TokenizerConfig,
                     sample: Callable[[int], list[Tensor]], patch_size: int, seed: int) -> None:
    """Build `tokenizer` from the patches of training views, unless it is already built (read
    back from a checkpoint). sample(n): the method's inputs for n training images, whose first
    entry is the normalised views [n, C, H, W]; at most `cfg.tokenizer_patches` of their
    patches, chosen with `seed`, make the codebook."""
    if bool(tokenizer.built):
        return
    images = sample(cfg.tokenizer_images)[0]
    patches = patchify(images.float(), patch_size).flatten(0, 1)  # [N*L, P]
    if len(patches) > cfg.tokenizer_patches:
        pick = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))
        patches = patches[pick[: cfg.tokenizer_patches].to(patches.device)]
    tokenizer.build(patches, seed)
