"""Context encoder: Context Encoders: Feature Learning by Inpainting.

Pathak, Krähenbühl, Donahue, Darrell, Efros, 2016. https://arxiv.org/abs/1604.07379
Official code: https://github.com/pathak22/context-encoder (train.lua, train_random.lua).

A region of each image is erased and the network paints it back from its context (§3). The
encoder is the backbone, run on the damaged image up to its last feature map; a channel-wise
fully connected layer lets every decoder unit see the whole map without the cost of a full dense
layer (§3.1); up-convolutions decode back to pixels. The loss is L2 on the erased region, with a
10x weight on a thin band of context around it (the official `overlapPred` / `overlapL2Weight`),
plus, optionally, an adversarial loss from a DCGAN discriminator on the filled region, weighted
0.999 / 0.001 (§3.2, `wtl2 = 0.999`). With the adversarial loss the discriminator is its own
parameter set, stepped first with Adam (beta1 0.5) at a tenth of the generator's learning rate
(train.lua: the generator's rate is `lr * 10` when 0 < wtl2 < 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.dcgan import DCGANDiscriminator, dcgan_init
from selfsup.losses import gan_discriminator_loss, gan_generator_loss
from selfsup.parts.gan import Discriminator
from selfsup.protocol import Output, ParamSet, Progress

MASKS = ("center", "blocks", "regions")


@dataclass
class ContextEncoderConfig:
    """name: registry key.
    mask: which region is erased, drawn per image. center: the central square of side
        sqrt(coverage) x the view (half of it at 0.25, as the official code), of which the part
        `overlap` px inside its border is erased and the whole square is predicted; blocks:
        random rectangles (§3.3), added while the union stays within `coverage`; regions: random
        shapes of exactly `coverage` of the pixels (see `region_masks`).
    coverage: share of the image a mask takes (the paper's 1/4).
    overlap: width in px of the band of context around the hole that is predicted too, with the
        heavier weight (4 px at 128 px in the official README, about 1 px at CIFAR's 32 px).
    overlap_weight: the band's L2 weight relative to the hole's (`overlapL2Weight = 10`).
    max_blocks: mask=blocks: rectangles drawn per image (sides 1/8 to 3/8 of the view).
    region_cells: mask=regions: side of the uniform noise grid that is upsampled and thresholded.
    bottleneck: channels of the 1x1 convolution after the channel-wise fully connected layer
        (null: the backbone's).
    adversarial_weight: weight of the adversarial loss; the L2 loss takes 1 minus it (the paper's
        0.001 / 0.999). 0: L2 only, no discriminator, one parameter set.
    disc_width: the discriminator's DCGAN width multiplier (1: 64, 128, ... channels, ndf=64).
    """

    name: str = "context_encoder"
    mask: str = "center"
    coverage: float = 0.25
    overlap: int = 1
    overlap_weight: float = 10.0
    max_blocks: int = 16
    region_cells: int = 8
    bottleneck: Optional[int] = None
    adversarial_weight: float = 0.001
    disc_width: float = 1.0

    # Adversarial loss on, so the registry-wide tests step two optimizers; Adam for the generator
    # (the quick recipe's LARS at lr 0.6 is SimCLR's).
    tiny = ("views.n_views=1", "method.adversarial_weight=0.001", "method.disc_width=0.125",
            "trainer.optimizer=adamw", "trainer.lr=0.002", "trainer.weight_decay=0.0")

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError(f"method.mask={self.mask!r} is not one of {', '.join(MASKS)}")
        if not 0 < self.coverage < 1:
            raise ValueError(f"method.coverage={self.coverage}: must be in (0, 1)")
        if self.overlap < 0:
            raise ValueError(f"method.overlap={self.overlap}: must be at least 0")
        if self.overlap_weight <= 0:
            raise ValueError(f"method.overlap_weight={self.overlap_weight}: must be positive")
        if self.max_blocks < 1:
            raise ValueError(f"method.max_blocks={self.max_blocks}: must be at least 1")
        if self.region_cells < 2:
            raise ValueError(f"method.region_cells={self.region_cells}: must be at least 2")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ValueError(f"method.bottleneck={self.bottleneck}: must be at least 1")
        if not 0 <= self.adversarial_weight < 1:
            raise ValueError(f"method.adversarial_weight={self.adversarial_weight}: must be in [0, 1)")
        if self.disc_width <= 0:
            raise ValueError(f"method.disc_width={self.disc_width}: must be positive")


# -- masks: [B, 1, H, W] float, 1 where a pixel is erased ----------------------------------------

def center_box(size: int, coverage: float) -> tuple[int, int]:
    """(top, side) of the central square: side sqrt(coverage) x size (size/2 at 0.25, the
    official fineSize/4 .. 3 fineSize/4)."""
    side = max(1, round(size * math.sqrt(coverage)))
    return (size - side) // 2, side


def center_masks(b: int, size: int, coverage: float, overlap: int, device) -> Tensor:
    """The central square shrunk by `overlap` px on each side (train.lua's erased part)."""
    top, side = center_box(size, coverage)
    if side - 2 * overlap < 1:
        raise ValueError(f"method.overlap={overlap} leaves nothing to erase in the {side} px centre "
                         f"square of {size} px views")
    hole = torch.zeros(b, 1, size, size, device=device)
    hole[..., top + overlap: top + side - overlap, top + overlap: top + side - overlap] = 1.0
    return hole


def block_masks(b: int, size: int, coverage: float, max_blocks: int, generator: torch.Generator,
                device) -> Tensor:
    """Random rectangles, possibly overlapping, "covering up to 1/4 of the image" (§3.3): each
    image draws `max_blocks` of them (sides uniform in 1/8 .. 3/8 of the view, wholly inside it),
    and each is added in turn unless the union would then exceed `coverage` (the first always is).
    The paper gives no more detail and its code for this mask is not released."""
    lo, hi = max(1, size // 8), max(1, (3 * size) // 8)
    hw = torch.randint(lo, hi + 1, (2, b, max_blocks), generator=generator, device=device)
    corner = (torch.rand(2, b, max_blocks, generator=generator, device=device) * (size - hw + 1)).long()
    pos = torch.arange(size, device=device)
    rows = (pos >= corner[0, ..., None]) & (pos < (corner[0] + hw[0])[..., None])  # [B, K, H]
    cols = (pos >= corner[1, ..., None]) & (pos < (corner[1] + hw[1])[..., None])  # [B, K, W]
    blocks = rows[..., :, None] & cols[..., None, :]  # [B, K, H, W]
    union = blocks[:, 0]
    limit = coverage * size * size
    for k in range(1, max_blocks):
        grown = union | blocks[:, k]
        fits = grown.sum(dim=(1, 2)) <= limit  # [B]
        union = torch.where(fits[:, None, None], grown, union)
    return union[:, None].float()


def region_masks(b: int, size: int, coverage: float, cells: int, generator: torch.Generator,
                 device) -> Tensor:
    """Random shapes. The paper cuts them from PASCAL VOC segmentation masks (§3.3); without
    those we follow the official train_random.lua: uniform noise on a coarse grid, upsampled
    bicubically and thresholded, erasing the low values (`pattern < density`, density 0.25).
    Its grid (0.06 cells per px) puts about 8 cells across a 128 px crop, so we draw `cells` x
    `cells` per image whatever its size; where it redraws crops until 20-30 % is erased, we set
    each image's threshold at its own `coverage` quantile, so exactly that share is erased."""
    noise = torch.rand(b, 1, cells, cells, generator=generator, device=device)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).flatten(1)
    k = max(1, round(coverage * size * size))
    threshold = smooth.kthvalue(k, dim=1, keepdim=True).values  # [B, 1]
    return (smooth <= threshold).float().view(b, 1, size, size)


def overlap_weights(hole: Tensor, overlap: int, overlap_weight: float) -> Tensor:
    """hole [B, 1, H, W] (1: erased) -> L2 weights [B, 1, H, W]: 1 on the hole, `overlap_weight`
    on the context within `overlap` px of it (a square neighbourhood: a max-pool dilation), 0
    elsewhere. For the centre mask the dilated hole is exactly the predicted square, so this is
    train.lua's `wtl2Matrix` (divided by wtl2). For blocks and regions we keep the same rule, a
    band around the hole; train_random.lua instead puts the 10x weight on all of the context."""
    if overlap == 0:
        return hole
    grown = F.max_pool2d(hole, 2 * overlap + 1, stride=1, padding=overlap)
    return hole + overlap_weight * (grown - hole)


# -- modules -------------------------------------------------------------------------------------

class ChannelwiseFC(nn.Module):
    """§3.1: a fully connected layer within each channel (h*w -> h*w, no mixing across channels:
    C (hw)^2 weights instead of a dense layer's (C hw)^2). x: [B, C, h, w] -> [B, C, h, w]."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        n = side * side
        bound = 1 / math.sqrt(n)  # nn.Linear's initialisation, per channel
        self.weight = nn.Parameter(torch.empty(channels, n, n).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, n).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = torch.einsum("bci,coi->bco", x.flatten(2), self.weight) + self.bias
        return y.reshape(b, c, h, w)


def up_decoder(cin: int, cout: int, side: int, size: int) -> nn.Sequential:
    """Up-convolutions (4x4, stride 2, BN + ReLU, as train.lua's netG) from a side x side map
    until the side reaches `size` or more, halving the channels (at least 16); the last one gives
    `cout` channels of normalised pixels with no BN or activation (train.lua's tanh is for pixels
    in [-1, 1]; ours are standardised). Where `size` is not side x a power of two the output is
    larger and `ContextEncoder.inpaint` resizes it (bilinear) to the view."""
    steps = max(1, math.ceil(math.log2(size / side)))
    layers: list[nn.Module] = []
    for i in range(steps):
        last = i == steps - 1
        nxt = cout if last else max(16, cin // 2)
        layers.append(nn.ConvTranspose2d(cin, nxt, 4, stride=2, padding=1, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
        cin = nxt
    dec = nn.Sequential(*layers)
    dcgan_init(dec)  # train.lua's weights_init, DCGAN's
    return dec


class ContextEncoder(nn.Module):
    config_class = ContextEncoderConfig

    def __init__(self, cfg: ContextEncoderConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        shape = backbone.input_shape  # (C, H, W), recorded by build_backbone
        self.channels, self.size = shape[0], shape[-1]
        self.layer = backbone.layer_names[-1]
        was = backbone.training
        with torch.no_grad():  # the last map's side, for the channel-wise layer's size
            side = backbone.eval().forward_maps(torch.zeros(1, *shape), [self.layer])[self.layer].shape[-1]
        backbone.train(was)
        dim = backbone.layer_dims[self.layer]
        width = cfg.bottleneck or dim
        self.bottleneck = nn.Sequential(
            ChannelwiseFC(dim, side),
            # §3.1: "followed by a stride 1 convolution to propagate information across channels".
            nn.Conv2d(dim, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.decoder = up_decoder(width, self.channels, side, self.size)
        self.discriminator = None
        if cfg.adversarial_weight > 0:
            judged = center_box(self.size, cfg.coverage)[1] if cfg.mask == "center" else self.size
            if judged < 8:
                raise ValueError(f"method.adversarial_weight>0: the discriminator needs images of at "
                                 f"least 8 px and would judge {judged} px ones; enlarge views.size or "
                                 f"method.coverage, or set method.adversarial_weight=0")
            self.discriminator = Discriminator(DCGANDiscriminator(self.channels, judged, cfg.disc_width))

    def param_sets(self) -> list[ParamSet]:
        if self.discriminator is None:
            return [ParamSet("model", [self], self.forward)]
        # train.lua: Adam, beta1 0.5, lr 2e-4 for D and 10x that for G (the recipes' trainer.lr).
        return [ParamSet("discriminator", [self.discriminator], self.discriminator_loss,
                         {"optimizer": "adamw", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}),
                ParamSet("generator", [self.backbone, self.bottleneck, self.decoder], self.forward)]

    @torch.no_grad()
    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """Views [B, C, H, H] (several are stacked) -> [masked input, image, hole [B', 1, H, H]].
        The erased pixels are set to 0, which in the views' units (standardised with the dataset's
        per-channel mean and std) is the dataset mean: the paper's fill, never black."""
        x = torch.cat(views)
        b, size, c = x.shape[0], x.shape[-1], self.cfg
        if c.mask == "center":
            hole = center_masks(b, size, c.coverage, c.overlap, x.device)
        elif c.mask == "blocks":
            hole = block_masks(b, size, c.coverage, c.max_blocks, generator, x.device)
        else:
            hole = region_masks(b, size, c.coverage, c.region_cells, generator, x.device)
        return [x * (1 - hole).to(x.dtype), x, hole]

    def inpaint(self, masked: Tensor) -> Tensor:
        """[B, C, H, W] damaged images -> [B, C, H, W] predicted normalised pixels."""
        fmap = self.backbone.forward_maps(masked, [self.layer])[self.layer]
        out = self.decoder(self.bottleneck(fmap))
        if out.shape[-1] != masked.shape[-1]:
            out = F.interpolate(out, size=masked.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def judged(self, x: Tensor, pred: Tensor, hole: Tensor) -> tuple[Tensor, Tensor]:
        """(real, fake) images for the discriminator. Centre: the true and the predicted square,
        as train.lua (the prediction there is the square). Blocks and regions: the image and the
        composite (context with the prediction in the hole), so that only the fill is judged."""
        if self.cfg.mask == "center":
            top, side = center_box(x.shape[-1], self.cfg.coverage)
            crop = (..., slice(top, top + side), slice(top, top + side))
            return x[crop], pred[crop]
        return x, torch.where(hole > 0, pred.to(x.dtype), x)

    def discriminator_loss(self, views: list[Tensor], progress: Progress) -> Output:
        """Binary cross-entropy: true regions real, the generator's (detached) fills fake."""
        masked, x, hole = views
        with torch.no_grad():
            pred = self.inpaint(masked)
        real, fake = self.judged(x, pred.detach(), hole)
        loss, acc = gan_discriminator_loss(self.discriminator(real), self.discriminator(fake))
        return Output(loss, {"d_acc": acc})

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        """The generator's loss: (1 - a) weighted L2 + a adversarial, a = method.adversarial_weight.
        The weighted L2 is train.lua's: squared errors times `overlap_weights`, summed and divided
        by the number of predicted values (hole and band, every channel)."""
        masked, x, hole = views
        pred = self.inpaint(masked).float()
        x, hole = x.float(), hole.float()
        err = (pred - x).pow(2)  # [B, C, H, W]
        w = overlap_weights(hole, self.cfg.overlap, self.cfg.overlap_weight)
        c = x.shape[1]
        rec = (w * err).sum() / ((w > 0).sum() * c).clamp(min=1)
        metrics = {"l2": ((hole * err).sum() / (hole.sum() * c).clamp(min=1)).detach()}
        loss = rec
        if self.discriminator is not None:
            a = self.cfg.adversarial_weight
            adv = gan_generator_loss(self.discriminator(self.judged(x, pred, hole)[1]))
            loss = (1 - a) * rec + a * adv
            metrics["g_adv"] = adv.detach()
        return Output(loss, metrics)

    def pictures(self, views: list[Tensor]) -> dict[str, list[Tensor]]:
        """Rows of normalised images: the image, the masked input (the hole at the dataset mean),
        the inpainting (the prediction in the hole, the context kept)."""
        masked, x, hole = views
        pred = self.inpaint(masked).float()
        x = x.float()
        return {"inpainting": [x, masked.float(), torch.where(hole > 0, pred, x)]}
