"""The text encoder of image-text methods (CLIP, Radford et al. 2021, §2.4): token and position
embeddings, pre-norm transformer blocks with causal attention (the ViT's blocks), a final norm,
and the features of each caption's end token as its representation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .vit import Block


class TextTransformer(nn.Module):
    """tokens [B, T] (each caption ends with `end_token`, then padding) -> [B, width]: the
    features at the first end token.

    vocab_size, context_length: the tokenizer's (selfsup/data/text.py). width, depth, heads: the
    transformer. Attention is causal, as CLIP's: the padding after a caption's end token never
    reaches the end token, so no padding mask is needed.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int = 256, depth: int = 4,
                 heads: int = 4, end_token: int = 2):
        super().__init__()
        self.dim, self.end_token = width, end_token
        self.token = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        # CLIP's initialisation (model.py, initialize_parameters): N(0, 0.02) tokens, N(0, 0.01) positions.
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token(tokens) + self.pos[: tokens.shape[1]]
        end = (tokens == self.end_token).int().argmax(dim=1)  # [B]: each caption's first end token
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[torch.arange(len(tokens), device=tokens.device), end]
