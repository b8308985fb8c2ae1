"""CLIP-style image-text pretraining: Learning Transferable Visual Models From Natural Language
Supervision.

Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger, Sutskever,
2021. https://arxiv.org/abs/2103.00020

Images and their captions, no labels. The image backbone and a causal text transformer
(selfsup/backbones/text.py) each end in a linear projection to a shared embedding; a symmetric
InfoNCE over the batch pulls every image towards its caption and away from the others' (§2.3,
fig. 3), with a learnable temperature initialised at 0.07 and the logit scale clipped at 100
(§2.5). Negatives are gathered from every process. Each step pairs every image with one of its
captions, drawn from the step's generator.

The trainer hands a method that sets `uses_texts` the batch's caption tokens and which of them
exist after the views (selfsup/protocol.py); the tokenizer (bytes, or BPE trained on the training
captions) is the trainer's, stored in the run folder (selfsup/data/text.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.text import TextTransformer
from selfsup.data.text import EOS, SPECIALS, Tokenizer
from selfsup.distributed import gather_with_grad, rank
from selfsup.protocol import Output, Progress


@dataclass
class CLIPConfig:
    """name: registry key. embed_dim: the shared embedding. temperature: its initial value (0.07,
    §2.5); max_logit_scale: the clip of 1/temperature (100). tokenizer: bytes | bpe;
    context_length: tokens per caption, start and end included; vocab_size: BPE's vocabulary
    (bytes: 259). text_width / text_depth / text_heads: the text transformer (CLIP's smallest is
    512 / 12 / 8; CPU recipes use a few narrow blocks)."""

    name: str = "clip"
    embed_dim: int = 256
    temperature: float = 0.07
    max_logit_scale: float = 100.0
    tokenizer: str = "bpe"
    context_length: int = 32
    vocab_size: int = 4096
    text_width: int = 256
    text_depth: int = 4
    text_heads: int = 4

    tiny = ("views.n_views=1", "method.embed_dim=16", "method.text_width=16", "method.text_depth=1",
            "method.text_heads=2", "method.tokenizer=bytes", "method.context_length=16", "data.caption_templates=[]")

    def __post_init__(self):
        if self.tokenizer not in ("bytes", "bpe"):
            raise ValueError(f"method.tokenizer={self.tokenizer!r} is not one of bytes, bpe")
        if not 0 < self.temperature < 1:
            raise ValueError(f"method.temperature={self.temperature}: must be in (0, 1)")
        if self.max_logit_scale < 1 / self.temperature:
            raise ValueError(f"method.max_logit_scale={self.max_logit_scale} is below the initial "
                             f"1/temperature={1 / self.temperature:g}")
        low = {"embed_dim": 1, "context_length": 3, "vocab_size": len(SPECIALS) + 256, "text_width": 1,
               "text_depth": 1, "text_heads": 1}
        for name, least in low.items():
            if getattr(self, name) < least:
                raise ValueError(f"method.{name}={getattr(self, name)}: must be at least {least}")
        if self.text_width % self.text_heads:
            raise ValueError(f"method.text_width={self.text_width} must divide among {self.text_heads} heads")

    @property
    def vocab(self) -> int:
        """The text embedding's rows: every byte and the specials, or BPE's vocabulary."""
        return 256 + len(SPECIALS) if self.tokenizer == "bytes" else self.vocab_size


def clip_loss(img: Tensor, txt: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE of CLIP (fig. 3) over the global batch.

    img, txt: [B, E] L2-normalised embeddings of this process's B pairs; scale: the logit scale
    (1 / temperature). Both are gathered from every process (gradients flow to this one's), and
    each of this process's images is scored against every caption, each caption against every
    image. Returns the mean of the two cross-entropies and the share of this process's images
    whose own caption scores highest.
    """
    b = img.shape[0]
    img_all, txt_all = gather_with_grad(img), gather_with_grad(txt)  # [W*B, E]
    targets = torch.arange(b, device=img.device) + rank() * b
    i2t = scale * img.float() @ txt_all.float().T  # [B, W*B]
    t2i = scale * txt.float() @ img_all.float().T
    loss = (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets)) / 2
    return loss, (i2t.argmax(1) == targets).float().mean()


class CLIP(nn.Module):
    config_class = CLIPConfig
    uses_texts = True

    def __init__(self, cfg: CLIPConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.text = TextTransformer(cfg.vocab, cfg.context_length, cfg.text_width, cfg.text_depth, cfg.text_heads,
                                    end_token=EOS)
        self.image_proj = nn.Linear(backbone.dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_width ** -0.5)  # CLIP's text_projection
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature)))

    def make_tokenizer(self, texts: list[list[str]]) -> Tokenizer:
        c = self.cfg
        return Tokenizer.fit(c.tokenizer, texts, c.context_length, c.vocab_size)

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[*images, tokens [B, K, T], valid [B, K]] -> [*images, tokens [B, T]]: one of each
        image's own captions, uniformly."""
        *images, tokens, valid = views
        if len(images) != 1:  # refused by build_config's dry run (selfsup/checks.py), naming the keys
            raise ValueError(f"CLIP takes one view of each image and its caption, got {len(images)} "
                             f"views: set views.n_views=1 and no extra_views")
        draw = torch.rand(valid.shape, generator=generator, device=valid.device) + valid.float()
        pick = draw.argmax(dim=1)  # the valid ones score above 1, the others below
        return [*images, tokens[torch.arange(len(tokens), device=tokens.device), pick]]

    def embed_images(self, x: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.backbone(x)).float(), dim=-1)

    def embed_texts(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.text_proj(self.text(tokens)).float(), dim=-1)

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        images, tokens = views
        scale = self.logit_scale.exp()
        loss, acc = clip_loss(self.embed_images(images), self.embed_texts(tokens), scale)
        return Output(loss, {"contrast_acc": acc, "temperature": 1 / scale.detach()})

    @torch.no_grad()
    def on_step_end(self, progress: Progress, state: dict) -> None:
        self.logit_scale.clamp_(max=math.log(self.cfg.max_logit_scale))  # §2.5: "clipped ... 100"
