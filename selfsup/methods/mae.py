"""MAE: Masked Autoencoders Are Scalable Vision Learners.

He, Chen, Xie, Li, Dollár, Girshick, 2021. https://arxiv.org/abs/2111.06377

Most patches of an image (75 %, §4 "Masking ratio") are removed at random; the ViT encoder sees
only the visible ones, so its cost falls with the mask ratio (§3 "MAE encoder"). A light decoder
puts a learned mask token at every removed position and predicts the pixels of every patch; the
loss is the mean squared error on the removed patches only (§3 "Reconstruction target"),
optionally against each patch's pixels normalised by the patch's own mean and variance
(`norm_pix_loss`, which the paper finds gives better representations, table 1c).

The augmentation is random resized crop and flip only (table 1f: colour jitter hurts MAE).
Details follow the official code (facebookresearch/mae, models_mae.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selfsup.backbones.vit import patchify, require_vit, unpatchify
from selfsup.parts.decoder import MaskedDecoder
from selfsup.protocol import Output, Progress
from selfsup.views.masks import mask_from_order, mask_views, num_visible


@dataclass
class MAEConfig:
    """name: registry key. mask_ratio: share of patches removed (0.75, §4).
    masking: random (MAE's) | block (BEiT's block-wise; table 1e: worse for MAE at 75 %).
    norm_pix_loss: targets are each patch's pixels normalised by its own mean and variance (§3).
    decoder_dim / decoder_depth / decoder_heads: the decoder (512 / 8 / 16 in the paper, table 1a-b;
        the CIFAR recipes use far smaller ones)."""

    name: str = "mae"
    mask_ratio: float = 0.75
    masking: str = "random"
    norm_pix_loss: bool = True
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16

    tiny = ("backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
            "views.n_views=1", "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2")

    def __post_init__(self):
        num_visible(1, self.mask_ratio)  # validates the ratio
        if self.masking not in ("random", "block"):
            raise ValueError(f"method.masking must be random or block, got {self.masking!r}")
        if self.decoder_depth < 1 or self.decoder_dim < 1:
            raise ValueError("method.decoder_depth and decoder_dim must be at least 1")


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool) -> Tensor:
    """Mean over masked patches of the per-patch mean squared error (§3).

    pred, target: [B, L, P] predicted and true patches (P = p*p*C); mask: [B, L] bool, True where
    the patch was removed. norm_pix: normalise each target patch by its mean and (unbiased)
    variance, + 1e-6, as models_mae.py does.
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, L]
    m = mask.float()
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


class MAE(nn.Module):
    config_class = MAEConfig

    def __init__(self, cfg: MAEConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "MAE")
        p, c = backbone.patch_size, backbone.in_channels
        self.decoder = MaskedDecoder(backbone.dim, cfg.decoder_dim, cfg.decoder_depth,
                                     cfg.decoder_heads, p * p * c, backbone.num_prefix_tokens)

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[image views] -> [images, patch orders [B, L]] (visible patches first)."""
        return mask_views(views, self.backbone.patch_size, self.cfg.masking, self.cfg.mask_ratio,
                          generator, "MAE")

    def _grid(self, x: Tensor) -> tuple[int, int]:
        p = self.backbone.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def reconstruct(self, x: Tensor, order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, C, H, W], order: [B, L] -> (predicted patches [B, L, P], target patches
        [B, L, P], mask [B, L] True where removed)."""
        grid = self._grid(x)
        k = num_visible(grid[0] * grid[1], self.cfg.mask_ratio)
        visible = order[:, :k]
        tokens = self.backbone.forward_tokens(x, keep=visible)  # [B, prefix + K, D]
        pred, _ = self.decoder(tokens, visible, grid)  # [B, L, P]
        return pred, patchify(x, self.backbone.patch_size), mask_from_order(order, k)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        x, order = views
        pred, target, mask = self.reconstruct(x, order)
        return Output(mae_loss(pred, target, mask, self.cfg.norm_pix_loss))

    @torch.no_grad()
    def pictures(self, views: list[Tensor]) -> dict[str, list[Tensor]]:
        """Rows of normalised images [n, C, H, W]: the originals, the visible patches (removed
        ones at the mean colour), and the reconstruction with the visible patches pasted back;
        a per-patch normalised prediction is mapped back with the true patch's mean and std, as
        the official demo does."""
        x, order = views
        pred, target, mask = self.reconstruct(x, order)
        pred = pred.float()
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        m = mask.unsqueeze(-1)
        p, c = self.backbone.patch_size, x.shape[1]
        grid = self._grid(x)
        masked = unpatchify(target.masked_fill(m, 0.0), p, c, grid)
        pasted = unpatchify(torch.where(m, pred, target), p, c, grid)
        return {"reconstructions": [x.float(), masked, pasted]}
