"""Vision Transformer encoder that can encode only the visible patches.

Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929
(architecture: §3.1), with the choices of MAE (He et al. 2021, https://arxiv.org/abs/2111.06377):
- the encoder sees only the kept patches: embeddings and position embeddings are gathered by
  index before the blocks, so its cost falls with the mask ratio (§3, "MAE encoder");
- fixed 2D sin-cos position embeddings (§A.1, taken from MoCo v3, Chen et al. 2021 §4) which,
  being a formula, also serve any image size divisible by the patch size;
- xavier-uniform init of every linear layer, the patch embedding treated as a linear layer (§A.1).
Blocks are pre-norm, MLP ratio 4, GELU, LayerNorm eps 1e-6, with stochastic depth
(Huang et al. 2016, https://arxiv.org/abs/1603.09382) rising linearly over depth as in DeiT.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from . import BackboneConfig


def patchify(imgs: Tensor, p: int) -> Tensor:
    """imgs: [B, C, H, W] -> [B, L, p*p*C], patches in row-major order, pixels as (p, p, C).

    The (p, p, C) pixel order matches MAE's, so per-patch targets read the same way.
    """
    B, C, H, W = imgs.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: Tensor, p: int, C: int, grid: Optional[Tuple[int, int]] = None) -> Tensor:
    """x: [B, L, p*p*C] -> imgs [B, C, h*p, w*p]; the inverse of `patchify`.

    grid: (h, w) patches per column and row; None means a square grid.
    """
    B, L, D = x.shape
    if D != p * p * C:
        raise ValueError(f"last dim {D} != p*p*C = {p}*{p}*{C}")
    if grid is None:
        h = w = int(math.isqrt(L))
        if h * w != L:
            raise ValueError(f"{L} patches do not form a square grid; pass grid=(h, w)")
    else:
        h, w = grid
    x = x.reshape(B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, C, h * p, w * p)


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2D sin-cos position embeddings: [grid_h * grid_w, dim], row-major like `patchify`.

    Half the channels encode the row, half the column, each as sin and cos of the position at
    dim/4 geometric frequencies (Transformer, Vaswani et al. 2017 §3.5, extended to 2D).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )

    def embed_1d(pos: Tensor) -> Tensor:  # pos: [L] -> [L, dim/2]
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed_1d(rows), embed_1d(cols)], dim=1).float()


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Drop the whole residual branch per sample with probability p, rescaling survivors."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Attention(nn.Module):
    """Multi-head self-attention; causal: each token attends to itself and those before it
    (the text encoder of CLIP, selfsup/backbones/text.py)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, N, D]
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D/heads]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))

    def weights(self, x: Tensor) -> Tensor:  # x: [B, N, D] -> [B, heads, N, N]
        """The attention weights that `forward` applies (it never forms them: SDPA)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if self.causal:
            scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        return scores.softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, causal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class VisionTransformer(nn.Module):
    """ViT encoder returning pooled features `[B, dim]`; `keep` selects the visible patches.

    in_channels: image channels.
    image_size: side of the square training images; sets `num_patches` and the cached position
        embeddings (other sizes divisible by the patch size also work, at a small extra cost).
    patch_size: side of the square patches.
    embed_dim, depth, num_heads: width, number of blocks, attention heads.
    mlp_ratio: MLP hidden width over embed_dim.
    pool: "mean" (mean of final patch tokens) or "cls" (a class token, then taken alone).
    drop_path: stochastic-depth rate of the last block.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "mean",
        drop_path: float = 0.0,
    ):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"backbone.pool must be 'mean' or 'cls', got {pool!r}")
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"backbone.patch_size {patch_size} must divide the image size {image_size}"
            )
        if depth < 1 or embed_dim < 1:
            raise ValueError(f"backbone.depth and embed_dim must be >= 1, got {depth} and {embed_dim}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"backbone.drop_path must be in [0, 1), got {drop_path}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.embed_dim = self.dim = embed_dim
        self.pool = pool
        # Tokens ahead of the patch tokens in forward_tokens' output (the class token, if any).
        self.num_prefix_tokens = 1 if pool == "cls" else 0

        # A linear layer on patchified pixels equals a stride-p conv, and lets us drop masked
        # patches before paying for their embedding.
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        # Not persistent: it is a formula of the grid, so checkpoints need not carry it.
        self.register_buffer(
            "pos_embed",
            sincos_pos_embed(embed_dim, self.grid_size, self.grid_size),
            persistent=False,
        )
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.layer_names: List[str] = [f"block{i}" for i in range(depth)]
        self.layer_dims: Dict[str, int] = {n: embed_dim for n in self.layer_names}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def _pos_embed(self, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
        if grid_h == grid_w == self.grid_size:
            return self.pos_embed
        return sincos_pos_embed(self.embed_dim, grid_h, grid_w).to(device)

    def embed(self, x: Tensor, keep: Optional[Tensor] = None, mask: Optional[Tensor] = None,
              mask_token: Optional[Tensor] = None) -> Tensor:
        """x: [B, C, H, W] -> tokens [B, K(+1 cls), D].

        keep: [B, K] indices of the patches to encode (MAE, SplitMask); None: all L patches.
        mask: [B, L] bool, True where a patch's embedding is replaced by `mask_token` [D] before
            the position embedding is added (BEiT, Bao et al. 2021 §2.2); needs keep=None.
        """
        B, _, H, W = x.shape
        p = self.patch_size
        patches = patchify(x, p)  # [B, L, p*p*C]
        pos = self._pos_embed(H // p, W // p, x.device)  # [L, D]
        if keep is not None:
            if mask is not None:
                raise ValueError("embed: give either keep (drop patches) or mask (replace them)")
            patches = torch.gather(
                patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            )
            pos = pos[keep]  # [B, K, D]
        tokens = self.patch_embed(patches)
        if mask is not None:
            if mask_token is None:
                raise ValueError("embed: mask needs a mask_token")
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        tokens = tokens + pos
        if self.cls_token is not None:
            # The class token carries no position (MAE adds a zero embedding to it).
            cls = self.cls_token.expand(B, -1, -1).to(tokens.dtype)
            tokens = torch.cat([cls, tokens], dim=1)
        return tokens

    def forward_tokens(self, x: Tensor, keep: Optional[Tensor] = None,
                       mask: Optional[Tensor] = None, mask_token: Optional[Tensor] = None) -> Tensor:
        """x: [B, C, H, W] -> normalised tokens [B, K(+1 cls), D], K = L when keep is None;
        keep, mask and mask_token as in `embed`."""
        x = self.embed(x, keep, mask, mask_token)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, heads, h, w]: where the last block looks. With a class token,
        its attention to each patch (as DINO shows it, §4.2.1); with mean pooling, the attention
        each patch receives, averaged over all queries."""
        tokens = self.embed(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        w = self.blocks[-1].attn.weights(self.blocks[-1].norm1(tokens))
        p = self.num_prefix_tokens
        w = w[:, :, 0, p:] if self.cls_token is not None else w[:, :, p:, p:].mean(dim=2)
        side = x.shape[-1] // self.patch_size
        return w.reshape(x.shape[0], -1, x.shape[-2] // self.patch_size, side)

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """x: [B, C, H, W], keep: [B, K] visible patch indices or None -> [B, dim]."""
        tokens = self.forward_tokens(x, keep)
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens.mean(dim=1)

    def forward_maps(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """x: [B, C, H, W] -> {name: [B, embed_dim, H/p, W/p]}, each named block's output patch
        tokens (before the final norm) laid out on the patch grid. Stops after the deepest
        requested block."""
        unknown = set(names) - set(self.layer_names)
        if unknown:
            last = len(self.blocks) - 1
            raise ValueError(f"unknown ViT layers {sorted(unknown)}; have block0..block{last}")
        wanted = {int(n[len("block"):]) for n in names}
        out: Dict[str, Tensor] = {}
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.embed(x)
        for i, block in enumerate(self.blocks[: max(wanted, default=-1) + 1]):
            x = block(x)
            if i in wanted:
                out[f"block{i}"] = x[:, self.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return {n: out[n] for n in names}

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """x: [B, C, H, W] -> {name: [B, embed_dim]}, each block's output averaged over patch
        tokens (before the final norm)."""
        return {n: m.mean(dim=(2, 3)) for n, m in self.forward_maps(x, names).items()}


def _build(embed_dim: int, depth: int, num_heads: int):
    def build(cfg: "BackboneConfig", in_channels: int, image_size: int) -> VisionTransformer:
        return VisionTransformer(
            in_channels=in_channels,
            image_size=image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim or embed_dim,
            depth=cfg.depth or depth,
            num_heads=cfg.num_heads or num_heads,
            pool=cfg.pool,
            drop_path=cfg.drop_path,
        )

    return build


# Sizes from DeiT (Touvron et al. 2020, https://arxiv.org/abs/2012.12877, Table 1) and ViT.
vit_tiny = _build(192, 12, 3)
vit_small = _build(384, 12, 6)
vit_base = _build(768, 12, 12)


def require_vit(backbone: nn.Module, method: str) -> VisionTransformer:
    """`backbone` if it is a ViT, else a ValueError saying that `method` needs one."""
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"{method} masks patches and needs a ViT backbone (backbone.name=vit_tiny, "
                         f"vit_small or vit_base), got {type(backbone).__name__}")
    return backbone
