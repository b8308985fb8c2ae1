"""The light transformer decoder that MAE and SplitMask put after an encoder of visible patches.

He et al. 2021 (https://arxiv.org/abs/2111.06377) §3, "MAE decoder": the encoded visible tokens
are projected to the decoder's width, a shared learned mask token stands at every position that
was not encoded, position embeddings are added to all tokens (without them the mask tokens would
not know where they are), a few transformer blocks run over the full set, and a linear layer
predicts each patch's target (pixels for MAE, token logits for SplitMask). The decoder is used
only in pretraining, so it can be narrow and shallow, which is what makes MAE cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.backbones.vit import Block, sincos_pos_embed


class MaskedDecoder(nn.Module):
    """enc_dim: the encoder's token width. dim, depth, num_heads: the decoder's transformer.
    out_dim: predictions per patch. prefix_tokens: tokens ahead of the patch tokens in the
    encoder's output (1 for a class token), passed through the blocks and not predicted from."""

    def __init__(self, enc_dim: int, dim: int, depth: int, num_heads: int, out_dim: int,
                 prefix_tokens: int = 0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"decoder width must be divisible by 4 (sin-cos positions), got {dim}")
        self.prefix_tokens = prefix_tokens
        self.dim = dim
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        self._pos: dict[tuple[int, int], Tensor] = {}
        for m in self.modules():  # as the encoder (MAE §A.1): xavier-uniform linears
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def pos_embed(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        key = tuple(grid)
        if key not in self._pos or self._pos[key].device != like.device:
            self._pos[key] = sincos_pos_embed(self.dim, *key).to(like.device)
        return self._pos[key]

    def forward(self, tokens: Tensor, visible: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """tokens: [B, P+K, enc_dim] encoder output (P prefix tokens, then the K visible patches in
        the order of `visible`); visible: [B, K] their patch indices; grid: (h, w) patches.

        Returns (predictions [B, L, out_dim], hidden [B, L, dim]) for every patch position in
        row-major order; the caller takes the masked ones.
        """
        x = self.embed(tokens)
        prefix, vis = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        b, _, d = vis.shape
        L = grid[0] * grid[1]
        full = self.mask_token.to(vis.dtype).expand(b, L, d)
        full = full.scatter(1, visible.unsqueeze(-1).expand(-1, -1, d), vis)  # unshuffle
        x = torch.cat([prefix, full + self.pos_embed(grid, full).to(full.dtype)], dim=1)
        for block in self.blocks:
            x = block(x)
        hidden = self.norm(x)[:, self.prefix_tokens :]
        return self.head(hidden), hidden

