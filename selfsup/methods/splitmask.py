"""SplitMask: split, inpaint and match.

El-Nouby, Izacard, Touvron, Laptev, Jégou, Grave, 2021, "Are Large-scale Datasets Necessary for
Self-Supervised Pre-training?", https://arxiv.org/abs/2112.10740 (§3, figure 2).

The patches of an image are split at random into two disjoint halves A and B. Each half goes
through the shared ViT encoder on its own (only its own patches, as MAE's encoder does), and a
shallow decoder, with mask tokens at the other half's positions, predicts the other half's
tokenizer ids: BEiT's masked token prediction, from A for B and from B for A ("inpaint"). The
decoder outputs of each half are averaged into one global descriptor per half, and an InfoNCE
loss over the batch pairs the two halves of the same image ("match"), which asks for features
that agree whatever subset of the image was seen. The InfoNCE is computed as SimCLR's NT-Xent
(`losses.global_nt_xent`): every other descriptor of the global batch, of either half, is a negative.
Both losses are weighted and settable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selfsup.backbones.vit import patchify, require_vit
from selfsup.losses import cross_entropy_accuracy, global_nt_xent
from selfsup.parts.codebook import PatchTokenizer
from selfsup.parts.decoder import MaskedDecoder
from selfsup.parts.tokenizers import TokenizerConfig, TokenTargets
from selfsup.protocol import Output, Progress
from selfsup.views.masks import mask_views


@dataclass
class SplitMaskConfig(TokenizerConfig):
    """name: registry key. decoder_dim / decoder_depth / decoder_heads: the shallow decoder (2
    blocks in the paper). mim_weight / contrast_weight: weights of the token-prediction and
    InfoNCE losses (1 and 1). temperature: of the InfoNCE loss (0.2, SimCLR's CIFAR value; our
    choice). The tokenizer settings are
    `TokenizerConfig`'s."""

    name: str = "splitmask"
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    mim_weight: float = 1.0
    contrast_weight: float = 1.0
    temperature: float = 0.2

    tiny = ("backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
            "views.n_views=1", "method.vocab_size=32", "method.tokenizer_images=256",
            "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2",
            # the trained tokenizer, so the registry-wide tests (checkpoints, exact resume, gloo)
            # cover its weights; BEiT's tiny run keeps the k-means codebook
            "method.tokenizer=vq", "method.tokenizer_steps=20", "method.tokenizer_batch=256",
            "method.tokenizer_dim=8", "method.tokenizer_hidden=16")

    def __post_init__(self):
        super().__post_init__()
        if self.decoder_depth < 1 or self.decoder_dim < 1:
            raise ValueError("method.decoder_depth and decoder_dim must be at least 1")
        if self.mim_weight < 0 or self.contrast_weight < 0 or self.mim_weight + self.contrast_weight == 0:
            raise ValueError("method.mim_weight and contrast_weight must be >= 0, not both 0")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")


def split_halves(order: Tensor) -> tuple[Tensor, Tensor]:
    """order: [B, L] random patch orders -> the two disjoint halves [B, L//2] and [B, L - L//2],
    which together cover every patch."""
    half = order.shape[1] // 2
    return order[:, :half], order[:, half:]


class SplitMask(TokenTargets, nn.Module):
    """The tokenizer's hooks (build from the data, fitted buffers, pictures) are `TokenTargets`'s."""

    config_class = SplitMaskConfig

    def __init__(self, cfg: SplitMaskConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "SplitMask")
        self.tokenizer = PatchTokenizer.for_vit(cfg, backbone)
        self.decoder = MaskedDecoder(backbone.dim, cfg.decoder_dim, cfg.decoder_depth,
                                     cfg.decoder_heads, cfg.vocab_size, backbone.num_prefix_tokens)

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[image views] -> [images, random patch orders [B, L]] (split into halves in forward)."""
        return mask_views(views, self.backbone.patch_size, "random", 0.0, generator, "SplitMask")

    def _branch(self, x: Tensor, seen: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Encode the patches `seen` [B, K]; decoder logits [B, L, V] and descriptor [B, dim]."""
        logits, hidden = self.decoder(self.backbone.forward_tokens(x, keep=seen), seen, grid)
        return logits, hidden.mean(dim=1)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        x, order = views
        b, p = x.shape[0], self.backbone.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = self.tokenizer(patchify(x, p))  # [B, L]
        half_a, half_b = split_halves(order)
        if half_a.shape[1] == half_b.shape[1]:  # one encoder pass over both halves
            logits, desc = self._branch(torch.cat([x, x]), torch.cat([half_a, half_b]), grid)
            logits_a, logits_b = logits[:b], logits[b:]
            desc_a, desc_b = desc[:b], desc[b:]
        else:  # an odd number of patches: halves of different sizes
            logits_a, desc_a = self._branch(x, half_a, grid)
            logits_b, desc_b = self._branch(x, half_b, grid)

        def inpaint(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
            """logits [B, L, V] at the other half's positions `target` [B, K']."""
            picked = logits.gather(1, target.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            return cross_entropy_accuracy(picked.flatten(0, 1), tokens.gather(1, target).flatten())

        mim_a, acc_a = inpaint(logits_a, half_b)  # A predicts B's tokens
        mim_b, acc_b = inpaint(logits_b, half_a)
        # Negatives from every process, as SimCLR's.
        contrast, contrast_acc = global_nt_xent([desc_a, desc_b], self.cfg.temperature)
        mim = 0.5 * (mim_a + mim_b)
        loss = self.cfg.mim_weight * mim + self.cfg.contrast_weight * contrast
        return Output(loss, {"mim": mim.detach(), "contrast": contrast.detach(),
                             "token_acc": 0.5 * (acc_a + acc_b), "contrast_acc": contrast_acc})
