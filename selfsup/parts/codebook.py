"""A codebook of vectors and the assignment of each input vector to an entry: the tokenizer of
BEiT's and SplitMask's patches (`tokenizers.py` builds it from patches of training views) and
iGPT's colour palette (from training pixels: k-means over RGB values, Chen et al. 2020 §3.2).

Five kinds of codebook: "kmeans" (`vocab_size` k-means centroids of the sample), "patches"
(`vocab_size` vectors drawn from the sample), random vectors with every coordinate drawn from a
uniform distribution ("uniform", SplitMask's §4.2) or a normal one ("normal"), both with zero mean
and unit variance like normalised pixels, and "vq", a small VQ-VAE trained on the sample
(`vq.py`), whose encoder gives a patch its token. A vector gets the id of the entry with the
largest inner product ("dot") or the nearest one ("nearest", Euclidean); "vq" assigns by its
encoder's latent and the nearest code. The codebook is a buffer, so every checkpoint and exported
encoder carries it; for "vq" it holds each code's decoded patch, and the VQ-VAE's weights are
buffers too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from selfsup import distributed as dist
from selfsup.parts.vq import PatchVQ, nearest_code

if TYPE_CHECKING:
    from selfsup.parts.tokenizers import TokenizerConfig

KINDS = ("kmeans", "patches", "uniform", "normal", "vq")
ASSIGN = ("dot", "nearest")
UNIFORM_HALF_WIDTH = 3 ** 0.5  # U(-sqrt 3, sqrt 3): zero mean, unit variance


def check_tokenizer(kind: str, assign: str, vocab_size: int) -> None:
    """Raise ValueError naming the bad `method.*` tokenizer setting."""
    if kind == "random":  # the name before the uniform draw existed
        raise ValueError("method.tokenizer=random is now 'uniform' (SplitMask's random vectors) or "
                         "'normal' (standard-normal vectors, the earlier 'random')")
    if kind not in KINDS:
        raise ValueError(f"method.tokenizer must be one of {', '.join(KINDS)}, got {kind!r}")
    if assign not in ASSIGN:
        raise ValueError(f"method.assign must be one of {', '.join(ASSIGN)}, got {assign!r}")
    if kind == "vq" and assign != "nearest":
        raise ValueError("method.assign=dot does not apply to method.tokenizer=vq, which assigns a "
                         "patch the code nearest to its encoder's latent: set method.assign=nearest")
    if vocab_size < 2:
        raise ValueError(f"method.vocab_size must be at least 2, got {vocab_size}")


class PatchTokenizer(nn.Module):
    """kind, assign, vocab_size: as in the module docstring. patch_dim: the vectors' width (p*p*C
    for patches, C for pixels). size_key: the setting that sets vocab_size, for messages. vq: for
    kind "vq", the VQ-VAE's `dim`, `hidden`, `steps`, `batch` and `lr` (see `vq.PatchVQ`)."""

    def __init__(self, kind: str, assign: str, vocab_size: int, patch_dim: int,
                 size_key: str = "method.vocab_size", vq: dict | None = None):
        super().__init__()
        check_tokenizer(kind, assign, vocab_size)
        self.kind, self.assign, self.size_key = kind, assign, size_key
        self.register_buffer("codebook", torch.zeros(vocab_size, patch_dim))  # [V, P]
        self.register_buffer("built", torch.zeros((), dtype=torch.bool))
        if kind == "vq":
            self.vq = PatchVQ(patch_dim, vocab_size=vocab_size, **vq)

    @classmethod
    def for_vit(cls, cfg: TokenizerConfig, vit: nn.Module) -> PatchTokenizer:
        """The tokenizer of `cfg` for the patches of a ViT (p*p*C pixels each)."""
        vq = {"dim": cfg.tokenizer_dim, "hidden": cfg.tokenizer_hidden, "steps": cfg.tokenizer_steps,
              "batch": cfg.tokenizer_batch, "lr": cfg.tokenizer_lr}
        return cls(cfg.tokenizer, cfg.assign, cfg.vocab_size, vit.patch_size ** 2 * vit.in_channels, vq=vq)

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    def build(self, patches: Tensor, seed: int) -> dict[str, float]:
        """Fill the codebook from `patches` [N, P] (sampled from the training views), seeded.
        Returns what building cost: seconds, and for "vq" its training curve's ends.

        Every process builds the same codebook from the same sample; rank 0's is then broadcast
        so that floating-point differences between machines cannot split the vocabulary."""
        start = time.perf_counter()
        v, p = self.codebook.shape
        if patches.dim() != 2 or patches.shape[1] != p:
            raise ValueError(f"tokenizer expects patches [N, {p}], got {tuple(patches.shape)}")
        if self.kind not in ("uniform", "normal") and patches.shape[0] < v:
            raise ValueError(f"tokenizer {self.kind!r} needs at least {self.size_key}={v} vectors to "
                             f"build from, got {patches.shape[0]}: lower {self.size_key}")
        g = torch.Generator().manual_seed(seed)
        x = patches.detach().float()
        info: dict[str, float] = {}
        if self.kind == "vq":
            info = self.vq.fit(x.to(self.codebook.device), seed)
            with torch.no_grad():
                book = self.vq.decode_latents(self.vq.codes)
        elif self.kind == "uniform":
            book = torch.rand(v, p, generator=g).mul_(2 * UNIFORM_HALF_WIDTH).sub_(UNIFORM_HALF_WIDTH)
        elif self.kind == "normal":
            book = torch.randn(v, p, generator=g)
        elif self.kind == "patches":
            book = x.cpu()[torch.randperm(len(x), generator=g)[:v]]
        else:
            book = kmeans(x.cpu(), v, seed)
        with torch.no_grad():
            self.codebook.copy_(book.to(self.codebook.device))
            if dist.is_distributed():
                for buf in self.buffers():
                    torch.distributed.broadcast(buf, 0)
            self.built.fill_(True)
        return {"tokenizer_s": time.perf_counter() - start, **info}

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        """patches: [B, L, P] -> token ids [B, L] (int64)."""
        if not bool(self.built):
            raise RuntimeError("the tokenizer's codebook has not been built: training builds it "
                               "from the data at its first step (Method.init_from_data)")
        if self.kind == "vq":
            return self.vq.assign(self.vq.encode(patches))
        if self.assign == "nearest":
            return nearest_code(patches, self.codebook)
        return (patches.float() @ self.codebook.float().T).argmax(dim=-1)

    def decode(self, ids: Tensor) -> Tensor:
        """token ids [...] -> their codebook vectors [..., P] ("vq": the decoded codes)."""
        return self.codebook[ids]


def kmeans(x: Tensor, k: int, seed: int) -> Tensor:
    """k centroids [k, P] of x [N, P] by scikit-learn's k-means (k-means++ seeding, Lloyd),
    seeded; one initialisation, which on tens of thousands of patches takes a few seconds."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed)
    km.fit(x.numpy().astype(np.float32))
    return torch.from_numpy(km.cluster_centers_).float()
