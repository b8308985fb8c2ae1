"""DCGAN: Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks. Radford, Metz, Chintala, 2015. https://arxiv.org/abs/1511.06434

A generator maps noise z to images and a discriminator tells them from real ones (the original
GAN game, Goodfellow et al. 2014); the discriminator's trunk (`backbone.name=dcgan`,
selfsup/backbones/dcgan.py) is the exported encoder. The paper's rules (§3): strided convolutions
(fractionally strided in the generator) instead of pooling, batch norm everywhere except the
generator's output and the discriminator's input, ReLU and a tanh output in the generator,
LeakyReLU 0.2 in the discriminator; weights from N(0, 0.02) (§4); Adam, lr 2e-4, beta1 0.5 (§4).
Each step updates the discriminator on a real and a generated batch, then the generator with the
non-saturating loss through the just-updated discriminator (soumith/dcgan.torch main.lua: one D
then one G update per batch). The paper's own evaluation (every discriminator layer max-pooled to
4x4, concatenated, a regularised linear classifier, §5.1) is `eval.pool=4` for any backbone.

Choices where the paper is silent, from the official code:
- z: 100 numbers uniform in [-1, 1] (the paper's "uniform noise distribution", and
  Newmu/dcgan_code's `np_rng.uniform(-1., 1., size=(nbatch, nz))`; dcgan.torch defaults to normal,
  `method.noise=normal`).
- Real and generated images pass the discriminator as separate batches, each with its own batch
  statistics (dcgan.torch's errD_real / errD_fake); no convolution of the generator has a bias
  (dcgan.torch removes them all; batch norm's shift takes their place).
- The discriminator's BatchNorm running statistics follow real images only: the generated
  batches normalise with their own statistics but leave the running ones alone. The running
  statistics are what the frozen encoder uses when evaluated, and Newmu/dcgan_code likewise
  re-estimates them on real training images before extracting features
  (svhn/svhn_semisup_analysis.py, infer_bnorm_stats). Likewise the generator's running
  statistics (used for the pictures, in eval mode) move in its own step only.

Units: views are normalised with the run's per-channel mean and std, and the discriminator must
see generated images in the same units, so the generator's tanh range [-1, 1] is mapped per
channel onto the range the real views take: (t + 1) / 2 is a pixel in [0, 1], and its normalised
value runs from (0 - mean) / std to (1 - mean) / std. The method is not given mean and std; it
fits that range (the per-channel minimum and maximum of the real views of 1,024 training images,
which reach black and white in every channel of natural image sets) in `init_from_data`, as a
fitted buffer kept by checkpoints and by the random-init baselines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from selfsup.backbones.dcgan import DCGANDiscriminator, dcgan_init
from selfsup.losses import gan_discriminator_loss, gan_generator_loss
from selfsup.parts.gan import Discriminator
from selfsup.protocol import Output, ParamSet, Progress

RANGE_IMAGES = 1024  # real views whose per-channel extremes fix the generator's output range
PICTURE_ROWS = 8
PICTURE_SEED = 1234  # the pictures' fixed noise: the same samples at every picture point


@dataclass
class DCGANConfig:
    """name: registry key. nz: the noise's dimension (100, §4 / both official codes).
    noise: uniform (in [-1, 1], the paper and Newmu/dcgan_code) | normal (N(0, 1), dcgan.torch).
    width: the generator's channel multiplier: its layers have 64·width·2^k channels, widest
    first, mirroring the discriminator's 64·width, 128·width, ...; null: exactly the
    discriminator's channels (backbone.width), as in both official codes (ngf = ndf)."""

    name: str = "dcgan"
    nz: int = 100
    noise: str = "uniform"
    width: Optional[float] = None

    tiny = ("backbone.name=dcgan", "views.n_views=1", "method.nz=16")

    def __post_init__(self):
        if self.nz < 1:
            raise ValueError(f"method.nz must be at least 1, got {self.nz}")
        if self.noise not in ("uniform", "normal"):
            raise ValueError(f"method.noise={self.noise!r} is not one of uniform, normal")
        if self.width is not None and self.width <= 0:
            raise ValueError(f"method.width={self.width}: must be positive (or null)")


class Generator(nn.Module):
    """z [B, nz] -> images [B, out_channels, S, S] in tanh's [-1, 1], S = 4 * 2^len(channels).

    channels: the widths of the 4x4 map and of each doubled map after it, widest first. The
    projection of z to the 4x4 map ("project and reshape", Fig. 1) is a 4x4 transposed
    convolution of z as a 1x1 map (dcgan.torch); every layer then doubles the side with a 4x4
    transposed convolution of stride 2, batch norm and ReLU, and the last one, to the image, has
    neither batch norm nor ReLU but tanh (§3)."""

    def __init__(self, nz: int, channels: list[int], out_channels: int):
        super().__init__()
        self.nz = nz
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, channels[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        for cin, cout in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels[-1], out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.size = 4 * 2 ** len(channels)
        dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])  # z [B, nz] -> [B, nz, 1, 1] -> [B, C, S, S]


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Batch norms inside still normalise with the batch's statistics but leave their running
    statistics as they were (momentum 0): for the generated batches (module docstring)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


class DCGAN(nn.Module):
    config_class = DCGANConfig
    fitted_buffers = ("pixel_range", "range_fitted")

    def __init__(self, cfg: DCGANConfig, backbone: nn.Module):
        super().__init__()
        if not isinstance(backbone, DCGANDiscriminator):
            raise ValueError(f"DCGAN's discriminator is the backbone: set backbone.name=dcgan "
                             f"(got {type(backbone).__name__})")
        if backbone.map_size != 4:
            raise ValueError(f"DCGAN's generator needs views.size a power of two (at least 8): the "
                             f"discriminator's last map is {backbone.map_size}x{backbone.map_size}, not 4x4")
        self.cfg = cfg
        self.backbone = backbone
        self.discriminator = Discriminator(backbone)  # the trunk is self.backbone itself
        depth = len(backbone.layer_names)
        if cfg.width is None:
            channels = [backbone.layer_dims[n] for n in reversed(backbone.layer_names)]
        else:
            channels = [max(1, int(round(64 * cfg.width * 2 ** i))) for i in reversed(range(depth))]
        in_channels = backbone.layers[0][0].in_channels
        self.generator = Generator(cfg.nz, channels, in_channels)
        # Normalised values of the darkest and brightest pixels per channel, [2, C]: tanh's -1
        # and 1 land there. Until fitted, [-1, 1] (a run normalised with mean = std = 0.5).
        self.register_buffer("pixel_range", torch.tensor([[-1.0], [1.0]]).repeat(1, in_channels))
        self.register_buffer("range_fitted", torch.tensor(False))

    def param_sets(self) -> list[ParamSet]:
        # Adam (AdamW without decay), lr 2e-4, beta1 0.5 (§4); no weight decay (dcgan.torch).
        adam = {"optimizer": "adamw", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}
        return [ParamSet("discriminator", [self.discriminator], self.discriminator_loss, dict(adam)),
                ParamSet("generator", [self.generator], self.forward, dict(adam))]

    @torch.no_grad()
    def init_from_data(self, sample: Callable[[int], list[Tensor]], seed: int) -> dict | None:
        """The normalised range of the real views, once (a resumed run reads it back)."""
        if bool(self.range_fitted):
            return None
        real = sample(RANGE_IMAGES)[0].float()  # [n, C, S, S], normalised
        low, high = real.amin(dim=(0, 2, 3)), real.amax(dim=(0, 2, 3))
        self.pixel_range.copy_(torch.stack([low, high]))
        self.range_fitted.fill_(True)
        return {"range_images": len(real), "range_low": float(low.min()), "range_high": float(high.max())}

    def noise(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """z [n, nz] from `generator`."""
        if self.cfg.noise == "normal":
            return torch.randn(n, self.cfg.nz, generator=generator, device=device)
        return torch.rand(n, self.cfg.nz, generator=generator, device=device) * 2 - 1

    @torch.no_grad()
    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[real views [B, C, S, S]] -> [real views, z [B, nz]]."""
        if len(views) != 1:
            raise ValueError(f"DCGAN takes 1 view, got {len(views)}: set views.n_views=1")
        real = views[0]
        if real.shape[-1] != self.generator.size or real.shape[-2] != self.generator.size:
            raise ValueError(f"DCGAN's generator makes {self.generator.size} px images: views.size "
                             f"must be {self.generator.size}, got {real.shape[-1]}")
        return [real, self.noise(real.shape[0], generator, real.device)]

    def generate(self, z: Tensor) -> Tensor:
        """z [B, nz] -> images [B, C, S, S] in the units of the normalised real views."""
        t = self.generator(z)
        low, high = self.pixel_range[0], self.pixel_range[1]
        return low[:, None, None] + (t + 1) / 2 * (high - low)[:, None, None]

    def discriminator_loss(self, views: list[Tensor], progress: Progress) -> Output:
        """Real images labelled 1, generated ones (no gradient to the generator) 0."""
        real, z = views
        with torch.no_grad(), running_stats_kept(self.generator):  # a D step changes D only
            fake = self.generate(z)
        real_logits = self.discriminator(real)  # [B]
        with running_stats_kept(self.discriminator):
            fake_logits = self.discriminator(fake)  # [B]
        loss, acc = gan_discriminator_loss(real_logits, fake_logits)
        real_logits, fake_logits = real_logits.detach().float(), fake_logits.detach().float()
        return Output(loss, {"d_acc": acc.detach(), "d_acc_real": (real_logits > 0).float().mean(),
                             "d_acc_fake": (fake_logits <= 0).float().mean(),
                             "d_real": torch.sigmoid(real_logits).mean()})

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        """The generator's loss: -log D(G(z)) through the discriminator, which this step leaves
        alone (only the generator's set steps, and its running statistics are kept)."""
        _, z = views
        with running_stats_kept(self.discriminator):
            logits = self.discriminator(self.generate(z))  # [B]
        return Output(gan_generator_loss(logits), {"d_fake": torch.sigmoid(logits.detach().float()).mean()})

    @torch.no_grad()
    def pictures(self, views: list[Tensor]) -> dict[str, list[Tensor]]:
        """{"samples": 8 rows of generated images}, one per real image of a row, from noise drawn
        with a fixed seed: the same z at every picture point, so the grids show the generator's
        progress on the same samples."""
        n, device = views[0].shape[0], views[0].device
        z = self.noise(PICTURE_ROWS * n, torch.Generator().manual_seed(PICTURE_SEED), torch.device("cpu"))
        fake = self.generate(z.to(device)).float()
        return {"samples": list(fake.split(n))}
