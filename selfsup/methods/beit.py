"""BEiT: BERT Pre-Training of Image Transformers, with cheap tokenizers.

Bao, Dong, Piao, Wei, 2021. https://arxiv.org/abs/2106.08254 ; tokenizers from SplitMask
(El-Nouby, Izacard, Touvron, Laptev, Jégou, Grave, 2021, https://arxiv.org/abs/2112.10740 §4.2).

About 40 % of an image's patches are masked in blocks (§2.5, block-wise masking); the ViT
encoder sees every position, with the masked patches' embeddings replaced by one learned mask
token (§2.2), and a linear layer on its output predicts, at each masked position, the token that
a tokenizer gives the original patch: cross-entropy on the masked positions only (§2.2, eq. 1).
BEiT's tokenizer is DALL-E's dVAE; here it is one of `tokenizers.py`'s codebooks or a small
VQ-VAE, built once from the training data. The paper's relative position bias and layer scale
are left out: the encoder is the same ViT as every other method's, so encoders compare like for
like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selfsup.backbones.vit import patchify, require_vit
from selfsup.losses import cross_entropy_accuracy
from selfsup.parts.codebook import PatchTokenizer
from selfsup.parts.tokenizers import TokenizerConfig, TokenTargets
from selfsup.protocol import Output, Progress
from selfsup.views.masks import mask_from_order, mask_views, num_visible


@dataclass
class BEiTConfig(TokenizerConfig):
    """name: registry key. mask_ratio: share of patches masked (0.4: 75 of 196 patches, §2.5).
    masking: block (BEiT's) | random. The tokenizer settings are `TokenizerConfig`'s."""

    name: str = "beit"
    mask_ratio: float = 0.4
    masking: str = "block"

    tiny = ("backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
            "views.n_views=1", "method.vocab_size=32", "method.tokenizer_images=256")

    def __post_init__(self):
        super().__post_init__()
        num_visible(1, self.mask_ratio)
        if self.masking not in ("random", "block"):
            raise ValueError(f"method.masking must be random or block, got {self.masking!r}")


class BEiT(TokenTargets, nn.Module):
    """The tokenizer's hooks (build from the data, fitted buffers, pictures) are `TokenTargets`'s."""

    config_class = BEiTConfig

    def __init__(self, cfg: BEiTConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "BEiT")
        self.tokenizer = PatchTokenizer.for_vit(cfg, backbone)
        self.mask_token = nn.Parameter(torch.zeros(backbone.dim))
        nn.init.normal_(self.mask_token, std=0.02)  # BEiT's trunc_normal_(std=.02)
        self.head = nn.Linear(backbone.dim, cfg.vocab_size)  # the "masked image modeling head"
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[image views] -> [images, patch orders [B, L]] (masked patches last)."""
        return mask_views(views, self.backbone.patch_size, self.cfg.masking, self.cfg.mask_ratio,
                          generator, "BEiT")

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        x, order = views
        mask = mask_from_order(order, num_visible(order.shape[1], self.cfg.mask_ratio))  # [B, L]
        tokens = self.tokenizer(patchify(x, self.backbone.patch_size))  # [B, L]
        out = self.backbone.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        out = out[:, self.backbone.num_prefix_tokens:]  # [B, L, D]
        # Cross-entropy at the M masked positions only (eq. 1): logits [M, V], token ids [M].
        loss, acc = cross_entropy_accuracy(self.head(out[mask]), tokens[mask])
        return Output(loss, {"token_acc": acc})
