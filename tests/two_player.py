"""A two-player method, registered for the tests only (conftest.py): the trainer's mechanism for
several parameter sets, each with its own optimizer and loss, proven on a real adversarial game
before any GAN uses it.

The game is an adversarial prior on the embedding (adversarial autoencoders, Makhzani et al. 2015,
https://arxiv.org/abs/1511.05644): a critic learns to tell the encoder's embeddings from draws of
N(0, I); the encoder makes the embeddings of an image's two views agree and, weighted, fools the
critic. The critic's set is updated first, with its own optimizer (AdamW, betas 0.5/0.999, as
GANs use); the encoder's loss then sees the updated critic, and its backward reaches the critic's
weights, which must not change in the encoder's step. The prior draws come from the step's
generator (in `prepare`), so the game resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.protocol import Output, ParamSet, Progress


@dataclass
class TwoPlayerConfig:
    """name: registry key. proj_dim: embedding width. critic_hidden: the critic MLP's width.
    adversarial_weight: weight of the fool-the-critic term in the encoder's loss."""

    name: str = "two_player"
    proj_dim: int = 8
    critic_hidden: int = 16
    adversarial_weight: float = 0.1

    tiny = ()


class TwoPlayer(nn.Module):
    config_class = TwoPlayerConfig

    def __init__(self, cfg: TwoPlayerConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = nn.Linear(backbone.dim, cfg.proj_dim)
        self.critic = nn.Sequential(nn.Linear(cfg.proj_dim, cfg.critic_hidden), nn.ReLU(),
                                    nn.Linear(cfg.critic_hidden, 1))

    def param_sets(self) -> list[ParamSet]:
        return [ParamSet("critic", [self.critic], self.critic_loss,
                         {"optimizer": "adamw", "lr": 1e-3, "betas": [0.5, 0.999], "weight_decay": 0.0}),
                ParamSet("encoder", [self.backbone, self.projector], self.forward)]

    @torch.no_grad()
    def prepare(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """[view 1, view 2] -> [view 1, view 2, prior draws [B, proj_dim]]."""
        b = views[0].shape[0]
        prior = torch.randn(b, self.cfg.proj_dim, generator=generator, device=views[0].device)
        return [*views, prior]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x)).float()  # [B, proj_dim]

    def critic_loss(self, views: list[torch.Tensor], progress: Progress) -> Output:
        """Binary cross-entropy: prior draws are real (1), embeddings fake (0)."""
        x1, _, prior = views
        with torch.no_grad():
            fake = self.embed(x1)
        logits = self.critic(torch.cat([prior, fake])).float().squeeze(1)  # [2B]
        target = torch.cat([torch.ones(len(prior)), torch.zeros(len(fake))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        return Output(loss, {"critic_acc": ((logits > 0).float() == target).float().mean()})

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        """The encoder's loss: 2 - 2 cos between the two views' embeddings, plus the weighted
        cross-entropy of the critic calling the first view's embeddings real."""
        x1, x2, _ = views
        z1, z2 = self.embed(x1), self.embed(x2)
        align = (2 - 2 * F.cosine_similarity(z1, z2, dim=1)).mean()
        fool = F.binary_cross_entropy_with_logits(self.critic(z1).float().squeeze(1),
                                                  torch.ones(len(z1), device=z1.device))
        loss = align + self.cfg.adversarial_weight * fool
        return Output(loss, {"align": align.detach(), "fool": fool.detach()})
