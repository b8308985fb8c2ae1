"""Cheap patch tokenizers for BEiT-style masked token prediction.

BEiT (Bao et al. 2021, https://arxiv.org/abs/2106.08254) predicts, for each masked patch, the id
that a tokenizer gives the original patch; its tokenizer is DALL-E's discrete VAE, trained on
250M images. SplitMask (El-Nouby et al. 2021, https://arxiv.org/abs/2112.10740, §4.2 and
table 2) finds that far cheaper tokenizers built from the target data alone do about as well:
k-means centroids of patches, patches sampled at random from the data, even random vectors
(the kinds of `codebook.PatchTokenizer`); `vq` trains a small VQ-VAE on the data instead
(`vq.py`). A patch is p*p*C normalised pixels in `patchify`'s order. The tokenizer is built
once, from the data, when training starts, and its buffers are the method's, so it is saved with
every checkpoint and the run reads it back rather than rebuilding it. `TokenTargets` gives a
method that predicts tokens these hooks once: build, the fitted buffers, and a picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.backbones.vit import patchify, unpatchify
from selfsup.parts.codebook import PatchTokenizer, check_tokenizer


@dataclass
class TokenizerConfig:
    """The tokenizer settings that BEiT and SplitMask share (their configs extend this one).

    tokenizer: kmeans | patches | uniform | normal | vq (see `codebook.py`). assign: dot | nearest
        (vq: nearest only). For random vectors, "uniform" is SplitMask's draw; "normal" is kept
        as a named alternative.
    vocab_size: codebook entries (DALL-E's is 8192 for ImageNet; a 32 px CIFAR patch of 4x4x3
        pixels needs far fewer: 512 by default).
    tokenizer_patches: at most this many patches, sampled from the views of
        `tokenizer_images` training images, build the codebook (or train the VQ-VAE).
    tokenizer_steps, tokenizer_batch, tokenizer_lr: the VQ-VAE's own schedule (Adam, constant
        lr); tokenizer_dim, tokenizer_hidden: its latent and hidden widths.
    """

    tokenizer: str = "kmeans"
    assign: str = "nearest"
    vocab_size: int = 512
    tokenizer_images: int = 5000
    tokenizer_patches: int = 50000
    tokenizer_steps: int = 2000
    tokenizer_batch: int = 1024
    tokenizer_lr: float = 1e-3
    tokenizer_dim: int = 32
    tokenizer_hidden: int = 256

    def __post_init__(self):
        check_tokenizer(self.tokenizer, self.assign, self.vocab_size)
        for key in ("tokenizer_images", "tokenizer_patches", "tokenizer_steps", "tokenizer_batch",
                    "tokenizer_dim", "tokenizer_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be at least 1, got {getattr(self, key)}")
        if not self.tokenizer_lr > 0:
            raise ValueError(f"method.tokenizer_lr must be positive, got {self.tokenizer_lr}")


def build_from_views(tokenizer: PatchTokenizer, sample: Callable[[int], list[Tensor]], patch_size: int,
                     seed: int, images: int, patches: int) -> dict[str, float]:
    """Build `tokenizer` from the patches of training views, unless it is already built (read
    back from a checkpoint). sample(n): the method's inputs for n training images, whose first
    entry is the normalised views [n, C, H, W]; at most `patches` of the patches of `images`
    of them, chosen with `seed`, make the codebook (patch_size 1: pixels, iGPT's palette).
    Returns the build's cost (`PatchTokenizer.build`), or {} when it was read back."""
    if bool(tokenizer.built):
        return {}
    views = sample(images)[0]
    vectors = patchify(views.float(), patch_size).flatten(0, 1)  # [N*L, P]
    if len(vectors) > patches:
        pick = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))
        vectors = vectors[pick[:patches].to(vectors.device)]
    return tokenizer.build(vectors, seed)


class TokenTargets:
    """Hooks of a method that predicts the tokens of `self.tokenizer` (a `PatchTokenizer` of its
    ViT `self.backbone`'s patches) with settings `self.cfg` (a `TokenizerConfig`): BEiT, SplitMask."""

    @property
    def fitted_buffers(self) -> tuple[str, ...]:
        """Every buffer of the tokenizer: the data fitted it before training."""
        return tuple(f"tokenizer.{name}" for name, _ in self.tokenizer.named_buffers())

    def init_from_data(self, sample: Callable[[int], list[Tensor]], seed: int) -> dict[str, float]:
        """Build the tokenizer from `sample(n)`, the views of n training images, once: a resumed
        run reads it back from the checkpoint."""
        return build_from_views(self.tokenizer, sample, self.backbone.patch_size, seed,
                                self.cfg.tokenizer_images, self.cfg.tokenizer_patches)

    def pictures(self, views: list[Tensor]) -> dict[str, list[Tensor]]:
        """Rows of normalised images: the views, and each patch replaced by its token's decoded
        entry (what the tokens keep of the image: for random vectors, nothing)."""
        x = views[0].float()
        p = self.backbone.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        decoded = self.tokenizer.decode(self.tokenizer(patchify(x, p)))
        return {"tokens": [x, unpatchify(decoded.float(), p, x.shape[1], grid)]}
