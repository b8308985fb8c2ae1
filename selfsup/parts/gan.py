"""A GAN's discriminator: a DCGAN trunk (selfsup/backbones/dcgan.py) and its real/fake head.

DCGAN trains it against its generator, and then the trunk is the exported encoder; the context
encoder's adversarial loss trains one against its inpainting. The head is the DCGAN
discriminator's last layer: one convolution over the whole last map (4x4 for 32 and 64 px
images) to one logit, no batch norm, weights from N(0, 0.02) (Radford et al. 2015, §3-4).
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.backbones.dcgan import DCGANDiscriminator


class Discriminator(nn.Module):
    """trunk: the DCGAN trunk (a method's backbone, or one built for the purpose). forward:
    images [B, C, H, W] -> real/fake logits [B] (a logit above 0 says real)."""

    def __init__(self, trunk: DCGANDiscriminator):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Conv2d(trunk.dim, 1, trunk.map_size)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk.forward_map(x)).flatten()
