"""iGPT: a GPT-2 transformer over a sequence of pixel tokens.

Chen, Radford, Child, Wu, Jun, Luan, Sutskever, 2020, "Generative Pretraining from Pixels",
https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf; the details follow the
official code (openai/image-gpt, src/model.py):
- pixels are mapped to the nearest entry of a colour palette (k-means over the training pixels,
  512 entries = the paper's 9-bit palette, §3.2) and read in raster order: the model never sees
  the 2-D structure;
- pre-norm blocks, n = norm(h); a = h + attention(n); h' = a + mlp(norm(a)) (§2.3), where the
  official `norm` has no mean subtraction and no bias: x / sqrt(mean(x^2) + 1e-5) * g, i.e.
  RMSNorm; the MLP's activation is the official `gelu2`, x * sigmoid(1.702 x); no linear layer
  has a bias;
- learned position embeddings; initialisation as in the official code: token embeddings
  N(0, 0.02), positions N(0, 0.01), the start token N(0, 0.02), query/key/value N(0, 1/sqrt(d)),
  the attention output N(0, 1/sqrt(d * depth)) (layer-dependent, as in the Sparse Transformer),
  the MLP N(0, 0.02);
- autoregressive models (`causal`) prepend a learned start-of-sequence token and drop the last
  token, so that position i is predicted from pixels < i and every pixel is predicted; BERT
  models see all positions, with the embeddings of masked tokens zeroed (the official `h * M`).
Features for probes (§3.3): a layer's feature is the sequence mean of its normalised input
(`block{i}`: norm(h) entering block i), and the pooled output is the mean of the final norm's
output (`final`), the official classifier's input. The palette is a buffer, so the exported
encoder maps images to features on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.parts.codebook import PatchTokenizer

from .vit import patchify, unpatchify

if TYPE_CHECKING:
    from . import BackboneConfig


def quick_gelu(x: Tensor) -> Tensor:
    """The official `gelu2`: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class GPTBlock(nn.Module):
    """One pre-norm block; `cache` (a dict, filled on the way) keeps keys and values for
    incremental decoding."""

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"backbone.embed_dim {dim} is not divisible by backbone.num_heads {heads}")
        self.heads = heads
        self.ln_1 = nn.RMSNorm(dim, eps=1e-5)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ln_2 = nn.RMSNorm(dim, eps=1e-5)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.fc_proj = nn.Linear(4 * dim, dim, bias=False)
        nn.init.normal_(self.qkv.weight, std=dim ** -0.5)
        nn.init.normal_(self.proj.weight, std=(dim * depth) ** -0.5)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.normal_(self.fc_proj.weight, std=0.02)

    def attention(self, n: Tensor, causal: bool, cache: Optional[dict]) -> Tensor:
        b, t, d = n.shape
        q, k, v = self.qkv(n).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if causal and past and t > 1:
            raise ValueError("incremental decoding feeds one token at a time after the prefix")
        # With a cache, a single new query attends to every earlier key: no mask is needed.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal and past == 0)
        return self.proj(a.transpose(1, 2).reshape(b, t, d))

    def forward(self, h: Tensor, causal: bool, cache: Optional[dict] = None) -> Tensor:
        a = h + self.attention(self.ln_1(h), causal, cache)
        return a + self.fc_proj(quick_gelu(self.fc(self.ln_2(a))))


class ImageGPT(nn.Module):
    """in_channels, image_size: the images (image_size^2 tokens a sequence). palette_size: colour
    palette entries. dim, depth, heads: the transformer. causal: autoregressive (True) or BERT."""

    # What the data fits before training starts: a random-init baseline keeps it.
    fitted_buffers = ("palette.codebook", "palette.built")

    def __init__(self, in_channels: int, image_size: int, palette_size: int = 512, dim: int = 512,
                 depth: int = 24, heads: int = 8, causal: bool = True):
        super().__init__()
        if palette_size < 2:
            raise ValueError(f"backbone.palette_size must be at least 2, got {palette_size}")
        if depth < 1 or dim < 1:
            raise ValueError(f"backbone.depth and embed_dim must be >= 1, got {depth} and {dim}")
        self.in_channels, self.image_size, self.causal = in_channels, image_size, causal
        self.seq_len = image_size * image_size
        self.palette = PatchTokenizer("kmeans", "nearest", palette_size, in_channels,
                                      size_key="backbone.palette_size")
        self.wte = nn.Embedding(palette_size, dim)
        self.wpe = nn.Parameter(torch.randn(self.seq_len, dim) * 0.01)
        # Only an autoregressive model has a start token (a BERT model would never use it).
        self.sos = nn.Parameter(torch.randn(dim) * 0.02) if causal else None
        self.blocks = nn.ModuleList(GPTBlock(dim, heads, depth) for _ in range(depth))
        self.ln_f = nn.RMSNorm(dim, eps=1e-5)
        nn.init.normal_(self.wte.weight, std=0.02)
        self.dim = self.embed_dim = dim
        self.layer_names: List[str] = [f"block{i}" for i in range(depth)] + ["final"]
        self.layer_dims: Dict[str, int] = {n: dim for n in self.layer_names}

    @property
    def palette_size(self) -> int:
        return self.palette.vocab_size

    # -- pixels and tokens -------------------------------------------------------------------
    def tokenize(self, x: Tensor) -> Tensor:
        """Normalised images [B, C, S, S] -> palette ids [B, S*S], raster order."""
        if x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"iGPT was built for {self.in_channels}-channel {self.image_size}x"
                             f"{self.image_size} images (views.size), got {tuple(x.shape[1:])}: set "
                             f"eval.size={self.image_size} (or null) to evaluate it")
        return self.palette(patchify(x.float(), 1))

    def decode(self, tokens: Tensor) -> Tensor:
        """Palette ids [B, S*S] -> normalised images [B, C, S, S] (exact up to the palette)."""
        s = self.image_size
        return unpatchify(self.palette.decode(tokens), 1, self.in_channels, (s, s))

    # -- the transformer ---------------------------------------------------------------------
    def embed(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Token ids [B, L] -> input embeddings [B, L, D].

        Autoregressive: the sequence moves one place right behind the start token, so position i
        holds token i-1 (the last token is never an input). BERT: `mask` [B, L] bool, True where
        a token is hidden; its embedding is zeroed."""
        h = self.wte(tokens)
        if self.causal:
            sos = self.sos.to(h.dtype).expand(h.shape[0], 1, -1)
            h = torch.cat([sos, h[:, :-1]], dim=1)
        if mask is not None:
            if self.causal:
                raise ValueError("masked tokens are for BERT models (backbone.causal=false)")
            h = h * (~mask).unsqueeze(-1).to(h.dtype)
        return h + self.wpe[: h.shape[1]].to(h.dtype)

    def forward_tokens(self, tokens: Tensor, mask: Optional[Tensor] = None,
                       layers: Sequence[str] = ()) -> tuple[Tensor, Dict[str, Tensor]]:
        """Token ids [B, L] -> (final-norm hidden states [B, L, D], {layer: [B, L, D]} the
        normalised inputs of the blocks named in `layers`, "final" the final norm's output).
        Position i's state predicts token i (autoregressive: from tokens < i)."""
        wanted = set(layers)
        h = self.embed(tokens, mask)
        states: Dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks):
            if f"block{i}" in wanted:
                states[f"block{i}"] = block.ln_1(h)
            h = block(h, self.causal)
        h = self.ln_f(h)
        if "final" in wanted:
            states["final"] = h
        return h, states

    def forward_cached(self, tokens: Optional[Tensor], start: int, caches: List[dict],
                       batch: int = 1) -> Tensor:
        """Incremental autoregressive decoding with a key/value cache per block (`caches`: one
        dict each, empty at the first call). The inputs are at positions start..: at position 0
        the start token, then `tokens` [B, T] (each the token of the position before; None: the
        start token alone, for `batch` sequences). Returns final-norm states [B, T(+1 at start 0), D]; the state at
        position j predicts token j, exactly as `forward_tokens` computes it."""
        if not self.causal:
            raise ValueError("incremental decoding needs an autoregressive model (backbone.causal=true)")
        parts = [] if tokens is None else [self.wte(tokens)]
        if start == 0:
            b = batch if tokens is None else tokens.shape[0]
            parts.insert(0, self.sos.to(self.wte.weight.dtype).expand(b, 1, -1))
        h = torch.cat(parts, dim=1)
        if start + h.shape[1] > self.seq_len:
            raise ValueError(f"positions {start}..{start + h.shape[1] - 1} exceed the sequence of {self.seq_len}")
        h = h + self.wpe[start:start + h.shape[1]].to(h.dtype)
        for block, cache in zip(self.blocks, caches):
            h = block(h, True, cache)
        return self.ln_f(h)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [B, C, S, S] -> [B, D]: the sequence mean of the final norm's output."""
        return self.forward_tokens(self.tokenize(x))[0].mean(dim=1)

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """{name: [B, D, S, S]} for names in `layer_names`: each pixel's state on the image grid
        (see the module docstring)."""
        unknown = set(names) - set(self.layer_names)
        if unknown:
            raise ValueError(f"unknown iGPT layers {sorted(unknown)}; have block0..block"
                             f"{len(self.blocks) - 1} and final")
        _, states = self.forward_tokens(self.tokenize(x), layers=names)
        s = self.image_size
        return {n: states[n].transpose(1, 2).reshape(x.shape[0], -1, s, s) for n in names}

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """{name: [B, D]} for names in `layer_names`: the sequence means of `forward_maps`."""
        return {n: m.mean(dim=(2, 3)) for n, m in self.forward_maps(x, names).items()}


def _build(dim: int, depth: int, heads: int):
    def build(cfg: "BackboneConfig", in_channels: int, image_size: int) -> ImageGPT:
        return ImageGPT(in_channels, image_size, palette_size=cfg.palette_size,
                        dim=cfg.embed_dim or dim, depth=cfg.depth or depth,
                        heads=cfg.num_heads or heads, causal=cfg.causal)

    return build


# iGPT-S (§3.1: 76M parameters, L = 24, d = 512, 8 heads); smaller models by backbone.depth,
# backbone.embed_dim and backbone.num_heads.
igpt_s = _build(512, 24, 8)
