"""iGPT: Generative Pretraining from Pixels.

Chen, Radford, Child, Wu, Jun, Luan, Sutskever, 2020.
https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf

A transformer that never sees the image's 2-D structure (the iGPT backbone, backbones/igpt.py)
is trained only to predict pixels, as tokens of a colour palette built from the training data:
- "ar": next-pixel prediction in raster order, the negative log-likelihood of every token given
  the ones before it (§2.1, L_AR);
- "bert": each position is hidden with probability 0.15, and the loss is the negative
  log-likelihood of the hidden tokens given the others (§2.1, L_BERT): per image, the mean over
  its hidden positions, then the mean over the batch, as the official code computes it.
The logits come from an untied linear head on the final-norm states, initialised at zero (the
official code zero-initialises every projection producing logits). The loss is logged in nats
(`loss`) and in bits per pixel token (`bits_per_token`). The paper's findings, both measurable
here: the best linear-probe features are in the middle layers (`selfsup eval linear RUN
eval.layer=all`), and the generative loss tracks representation quality.

Pictures: the paper's completions (fig. 1): the top half of each image is given, the bottom half
sampled `completions` times (autoregressive models, with a key/value cache), next to the
original.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.igpt import ImageGPT
from selfsup.parts.tokenizers import build_from_views
from selfsup.protocol import Output, Progress

OBJECTIVES = ("ar", "bert")


@dataclass
class IGPTConfig:
    """name: registry key. objective: ar | bert (the backbone's `causal` must match: true for ar,
    false for bert). mask_prob: share of positions hidden by BERT (0.15, §2.1).
    palette_images / palette_pixels: the palette (backbone.palette_size k-means centroids) is
        built when training starts from at most `palette_pixels` pixels of the views of
        `palette_images` training images.
    completions: sampled completions per picture image; temperature: of the sampling softmax
        (1: the model's own distribution)."""

    name: str = "igpt"
    objective: str = "ar"
    mask_prob: float = 0.15
    palette_images: int = 5000
    palette_pixels: int = 100_000
    completions: int = 3
    temperature: float = 1.0

    tiny = ("backbone.name=igpt_s", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
            "backbone.palette_size=16", "views.n_views=1", "views.size=8", "method.palette_images=128")

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"method.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"method.mask_prob must lie in (0, 1), got {self.mask_prob}")
        for name in ("palette_images", "palette_pixels", "completions"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")


def ar_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """L_AR: mean negative log-likelihood of every token. logits [B, L, V], tokens [B, L]."""
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def bert_loss(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """L_BERT: per image the mean negative log-likelihood of its hidden tokens (mask [B, L],
    True where hidden), then the mean over images (an image with none hidden counts 0)."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")  # [B, L]
    m = mask.float()
    return ((nll * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).mean()


class IGPT(nn.Module):
    config_class = IGPTConfig

    def __init__(self, cfg: IGPTConfig, backbone: nn.Module):
        super().__init__()
        if not isinstance(backbone, ImageGPT):
            raise ValueError(f"iGPT needs the iGPT backbone (backbone.name=igpt_s), got {type(backbone).__name__}")
        if backbone.causal != (cfg.objective == "ar"):
            raise ValueError(f"method.objective={cfg.objective} needs backbone.causal="
                             f"{str(cfg.objective == 'ar').lower()}")
        self.cfg = cfg
        self.backbone = backbone
        self.head = nn.Linear(backbone.dim, backbone.palette_size, bias=False)  # untied
        nn.init.zeros_(self.head.weight)

    def init_from_data(self, sample: Callable[[int], list[Tensor]], seed: int) -> None:
        """The palette: k-means over training pixels, once (a resumed run reads it back)."""
        build_from_views(self.backbone.palette, sample, 1, seed, self.cfg.palette_images,
                         self.cfg.palette_pixels)

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[images] -> [images] (ar) or [images, hidden positions [B, L] bool] (bert)."""
        if len(views) != 1:
            raise ValueError(f"iGPT takes 1 view, got {len(views)}: set views.n_views=1")
        if self.cfg.objective == "ar":
            return views
        x = views[0]
        mask = torch.rand(x.shape[0], self.backbone.seq_len, generator=generator, device=x.device)
        return [x, mask < self.cfg.mask_prob]

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        tokens = self.backbone.tokenize(views[0])  # [B, L]
        mask = views[1] if self.cfg.objective == "bert" else None
        hidden, _ = self.backbone.forward_tokens(tokens, mask=mask)
        logits = self.head(hidden)  # [B, L, V]
        if mask is None:
            loss = ar_loss(logits, tokens)
            hit = (logits.argmax(-1) == tokens).float().mean()
        else:
            loss = bert_loss(logits, tokens, mask)
            hit = (logits.argmax(-1) == tokens)[mask].float().mean()
        return Output(loss, {"bits_per_token": loss.detach() / math.log(2), "token_acc": hit})

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def complete(self, prefix: Tensor, generator: torch.Generator, cache: bool = True) -> Tensor:
        """Sample the rest of each sequence after its `prefix` [B, P] (P >= 1) tokens at
        `temperature`: [B, L]. With `cache`, keys and values are kept per block and each step
        feeds one token; without, every step recomputes the whole sequence (the reference)."""
        bb = self.backbone
        seq = torch.zeros(prefix.shape[0], bb.seq_len, dtype=torch.long, device=prefix.device)
        p = prefix.shape[1]
        seq[:, :p] = prefix
        caches = [{} for _ in bb.blocks]
        for pos in range(p, bb.seq_len):
            if not cache:
                state = bb.forward_tokens(seq)[0][:, pos]
            elif pos == p:  # the prefix at once: positions 0..p (the start token, then the prefix)
                state = bb.forward_cached(prefix, 0, caches)[:, -1]
            else:
                state = bb.forward_cached(seq[:, pos - 1:pos], pos, caches)[:, -1]
            probs = F.softmax(self.head(state).float() / self.cfg.temperature, dim=-1)
            seq[:, pos] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return seq

    @torch.no_grad()
    def pictures(self, views: list[Tensor]) -> dict[str, list[Tensor]]:
        """Completions (autoregressive models): rows of the original images as the palette
        renders them, the given top half (the rest at the mean colour), and `completions`
        sampled bottom halves. BERT models draw no picture."""
        if self.cfg.objective != "ar":
            return {}
        bb, x = self.backbone, views[0]
        tokens = bb.tokenize(x)
        half = (bb.image_size // 2) * bb.image_size  # the top rows' tokens
        g = torch.Generator(device=x.device).manual_seed(0)
        given = bb.decode(tokens).clone()
        given[..., bb.image_size // 2:, :] = 0.0  # normalised 0: the mean colour
        samples = [bb.decode(self.complete(tokens[:, :half], g)) for _ in range(self.cfg.completions)]
        return {"completions": [bb.decode(tokens), given, *samples]}
