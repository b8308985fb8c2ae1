"""Cheap patch tokenizers for BEiT-style masked token prediction.

BEiT (Bao et al. 2021, https://arxiv.org/abs/2106.08254) predicts, for each masked patch, the id
that a tokenizer gives the original patch; its tokenizer is DALL-E's discrete VAE, trained on
250M images. SplitMask (El-Nouby et al. 2021, https://arxiv.org/abs/2112.10740, §4.2 and
table 2) finds that far cheaper tokenizers built from the target data alone do about as well:
k-means centroids of patches, patches sampled at random from the data, even random vectors
(the kinds of `codebook.PatchTokenizer`). A patch is p*p*C normalised pixels in `patchify`'s
order. The codebook is built once, from the data, when training starts, and is a buffer of the
method, so it is saved with every checkpoint and the run reads it back rather than rebuilding it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.backbones.vit import patchify
from selfsup.parts.codebook import PatchTokenizer, check_tokenizer


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


def build_from_views(tokenizer: PatchTokenizer, sample: Callable[[int], list[Tensor]], patch_size: int,
                     seed: int, images: int, patches: int) -> None:
    """Build `tokenizer` from the patches of training views, unless it is already built (read
    back from a checkpoint). sample(n): the method's inputs for n training images, whose first
    entry is the normalised views [n, C, H, W]; at most `patches` of the patches of `images`
    of them, chosen with `seed`, make the codebook (patch_size 1: pixels, iGPT's palette)."""
    if bool(tokenizer.built):
        return
    views = sample(images)[0]
    vectors = patchify(views.float(), patch_size).flatten(0, 1)  # [N*L, P]
    if len(vectors) > patches:
        pick = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))
        vectors = vectors[pick[:patches].to(vectors.device)]
    tokenizer.build(vectors, seed)
