"""iBOT: Image BERT Pre-Training with Online Tokenizer.

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong, 2022 (ICLR). https://arxiv.org/abs/2111.07832

DINO's self-distillation, plus masked image modelling whose targets come from the teacher itself,
the "online tokenizer" (§3). The student sees the two global crops with a share of
their patches replaced by a learned mask token (blockwise, as BEiT; ratio drawn per image) and the
local crops unmasked; the EMA teacher sees the global crops unmasked. Two losses, weighted 1 and 1:
- [CLS]: DINO's cross-entropy between the teacher's centred, sharpened output on one global crop
  and the student's on every other crop (L_[CLS]; the student's global crops are the masked ones);
- patches (MIM): on the masked positions of each global crop, the cross-entropy between the
  teacher's output on the same patch of the unmasked crop and the student's (L_MIM), averaged over
  the masked patches of each image and then over the batch (an image with nothing masked adds 0).
Each output has its own centre (momentum 0.9) and teacher temperature schedule (patches: 0.04 ->
0.07). The head (DINO's: MLP, L2-normalised bottleneck, weight-normalised last layer) is applied
to the [CLS] output and to every patch token; by default one head serves both (`shared_head`, as
in the paper's ViT runs); otherwise the patch tokens get their own last layer of `patch_out_dim`.
With a mean-pooled ViT (no class token) the mean of the patch tokens stands in for [CLS], as
the official code's `use_mean_pooling` does. Details follow the official code (bytedance/ibot:
main_ibot.py iBOTLoss and train_one_epoch, models/head.py iBOTHead, loader.py ImageFolderMask,
models/vision_transformer.py's masked_embed, README's ViT-S/16 command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.vit import VisionTransformer, require_vit
from selfsup.distributed import all_reduce_mean
from selfsup.losses import dino_loss
from selfsup.parts.heads import DINOHead, NormalizedLinear
from selfsup.parts.multicrop import encode_crops
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Output, Progress
from selfsup.schedules import warmup_schedule


@dataclass
class IBOTConfig:
    """name: registry key.
    proj_hidden / proj_dim / head_layers / out_dim / norm_last_layer: the DINO head on the [CLS]
        output, as DINO's (2048 / 256 / 3; out_dim 8192 and norm_last_layer false in the README's
        ViT-S/16 run, true is main_ibot.py's default and steadier).
    use_bn: BatchNorm in the head's MLP, its statistics over every token of the batch
        (main_ibot.py's norm_in_head=bn; off by default, as in the paper's ViT runs).
    shared_head: the patch tokens go through the same head, last layer included (true: the README's
        runs). false: they get their own weight-normalised last layer of `patch_out_dim` outputs,
        in student and teacher alike (main_ibot.py's default mixes a separate student layer with a
        shared teacher; here the choice holds for both).
    patch_out_dim: outputs of the separate patch layer (8192, main_ibot.py); null: out_dim. With a
        shared head it must be null or equal to out_dim.
    student_temp: tau_s of both losses (0.1).
    teacher_temp / warmup_teacher_temp: tau_t of the [CLS] output, linear from the second to the
        first over `warmup_teacher_temp_epochs` (0.04 -> 0.07 over 30 in the README's ViT-S run).
    teacher_patch_temp / warmup_teacher_patch_temp: the same for the patch outputs (0.04 -> 0.07,
        main_ibot.py's defaults), over the same warm-up.
    center_momentum: of both centres (0.9).
    momentum: the teacher EMA's starting momentum, raised to 1 along a half cosine (0.996).
    freeze_last_layer: epochs during which the last layer(s) get no update (1); may be fractional.
    cls_weight / patch_weight: lambda1 and lambda2 (1 and 1).
    masking: block (BEiT-style rectangles, main_ibot.py's pred_shape default) | random.
    mask_ratio: [low, high] of the share of patches masked in an image that is masked, drawn
        uniformly per image and global crop ([0.1, 0.5]: the README's pred_ratio 0.3 +- 0.2).
    mask_prob: probability that a global crop is masked at all (0.5: the README's pred_ratio list
        [0, 0.3] picks 0 for half the crops).
    """

    name: str = "ibot"
    proj_hidden: int = 2048
    proj_dim: int = 256
    head_layers: int = 3
    out_dim: int = 8192
    norm_last_layer: bool = True
    use_bn: bool = False
    shared_head: bool = True
    patch_out_dim: Optional[int] = None
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_patch_temp: float = 0.07
    warmup_teacher_patch_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer: float = 1.0
    cls_weight: float = 1.0
    patch_weight: float = 1.0
    masking: str = "block"
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    mask_prob: float = 0.5

    # A separate patch layer, so that the registry-wide tests (every parameter reached, resume,
    # 2-process DDP) go through it too.
    tiny = ("backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
            "method.proj_hidden=32", "method.proj_dim=16", "method.out_dim=64",
            "method.shared_head=false", "method.patch_out_dim=48")

    def __post_init__(self):
        for name in ("proj_hidden", "proj_dim", "head_layers", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)}")
        if self.patch_out_dim is not None:
            if self.patch_out_dim < 1:
                raise ValueError(f"method.patch_out_dim must be at least 1, got {self.patch_out_dim}")
            if self.shared_head and self.patch_out_dim != self.out_dim:
                raise ValueError(f"method.patch_out_dim={self.patch_out_dim} needs "
                                 f"method.shared_head=false: a shared head gives out_dim outputs")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp", "teacher_patch_temp",
                     "warmup_teacher_patch_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"method.{name} must be positive, got {getattr(self, name)}")
        for name in ("center_momentum", "momentum", "mask_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"method.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("warmup_teacher_temp_epochs", "freeze_last_layer", "cls_weight", "patch_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"method.{name} must be >= 0, got {getattr(self, name)}")
        if self.masking not in ("block", "random"):
            raise ValueError(f"method.masking must be block or random, got {self.masking!r}")
        lo_hi = list(self.mask_ratio)
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1] < 1:
            raise ValueError(f"method.mask_ratio must be [low, high] with 0 <= low <= high < 1, "
                             f"got {self.mask_ratio}")


def draw_masks(batch: int, grid: tuple[int, int], ratio: tuple[float, float], prob: float,
               kind: str, g: torch.Generator, device: torch.device) -> Tensor:
    """Patch masks [B, L] bool (True: masked) of iBOT's loader.py, batched.

    Each image is masked with probability `prob`, then at a share r ~ U[ratio] of its L patches:
    int(r L) of them. random: uniformly chosen patches. block: BEiT-style rectangles, as
    ImageFolderMask draws them: area s ~ U[(min(h, w) // 3)^2, patches still to mask], aspect
    ratio log-uniform in [0.3, 1/0.3], smaller than the grid on both sides, kept only if it
    masks at least one new patch and does not overshoot the image's budget. The rounds are batched
    (every image that still needs patches tries one rectangle per round); after the last round a
    budget that no rectangle could fill is topped up with random patches, so every image has
    exactly its int(r L) (the official loop stops short instead).
    """
    gh, gw = grid
    n = gh * gw
    u = torch.rand(2, batch, generator=g, device=device)
    r = ratio[0] + u[0] * (ratio[1] - ratio[0])
    budget = torch.where(u[1] < prob, (r * n).floor(), torch.zeros_like(r)).long()  # [B]
    masked = torch.zeros(batch, gh, gw, dtype=torch.bool, device=device)
    if kind == "block" and bool(budget.any()):
        rows = torch.arange(gh, device=device).view(1, -1, 1)
        cols = torch.arange(gw, device=device).view(1, 1, -1)
        low = float((min(gh, gw) // 3) ** 2)
        log_aspect = math.log(1 / 0.3)
        for _ in range(4 * int(budget.max()) + 10):  # ample: most accepted blocks add >= 1 patch
            count = masked.sum(dim=(1, 2))
            need = count < budget
            if not bool(need.any()):
                break
            draw = torch.rand(4, batch, generator=g, device=device)
            s = low + draw[0] * ((budget - count).float() - low)  # U between low and what is left
            aspect = torch.exp((2 * draw[1] - 1) * log_aspect)
            h = (s * aspect).sqrt().round().long()
            w = (s / aspect).sqrt().round().long()
            fits = (h < gh) & (w < gw) & (h > 0) & (w > 0)
            top = (draw[2] * (gh - h + 1).clamp_min(1)).long()
            left = (draw[3] * (gw - w + 1).clamp_min(1)).long()
            rect = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                    & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
            grown = masked | rect
            added = grown.sum(dim=(1, 2)) - count
            ok = need & fits & (added > 0) & (count + added <= budget)
            masked = torch.where(ok.view(-1, 1, 1), grown, masked)
    # Masked patches score in [1, 2), the others in [0, 1): the `budget` highest are the block
    # patches, then (if a budget was not met, or for random masking) random others.
    score = masked.view(batch, n).float() + torch.rand(batch, n, generator=g, device=device)
    order = score.argsort(dim=1, descending=True)
    first = torch.arange(n, device=device).view(1, -1) < budget.view(-1, 1)  # [B, L]
    return torch.zeros_like(first).scatter_(1, order, first)


def patch_loss(student: Tensor, teacher: Tensor, mask: Tensor, center: Tensor, student_temp: float,
               teacher_temp: float) -> Tensor:
    """The masked patch-token distillation loss (iBOT's L_MIM, main_ibot.py's loss2).

    student: [N, L, K] patch logits of the student on N masked crops.
    teacher: [N, L, K] patch logits of the teacher on the same crops unmasked.
    mask: [N, L] bool, True where the student's patch was masked. center: [1, K] or [K].
    Per crop: the mean over its masked patches of -sum_k P_t_k log P_s_k (0 with none masked);
    then the mean over the N crops.
    """
    log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)
    p_t = F.softmax((teacher.float() - center.float().reshape(-1)) / teacher_temp, dim=-1)
    ce = -(p_t * log_p_s).sum(dim=-1)  # [N, L]
    m = mask.float()
    return ((ce * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).mean()


def pooled(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """tokens: [B, prefix + L, D] -> the backbone's pooled output [B, D] (its `forward`)."""
    return tokens[:, 0] if vit.pool == "cls" else tokens[:, vit.num_prefix_tokens:].mean(dim=1)


class IBOT(nn.Module):
    config_class = IBOTConfig

    def __init__(self, cfg: IBOTConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "iBOT")
        self.head = DINOHead(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.head_layers,
                             cfg.out_dim, bn=cfg.use_bn, learn_norm=not cfg.norm_last_layer)
        parts = [backbone, self.head]
        if not cfg.shared_head:
            self.patch_layer = NormalizedLinear(cfg.proj_dim, cfg.patch_out_dim or cfg.out_dim,
                                                learn_norm=not cfg.norm_last_layer)
            parts.append(self.patch_layer)
        # The learned [MASK] embedding that replaces a masked patch's embedding (masked_embed,
        # zeros at init in the official vision_transformer.py).
        self.mask_token = nn.Parameter(torch.zeros(backbone.dim))
        # The teacher starts as the student and runs without stochastic depth (main_ibot.py builds
        # it without drop_path_rate).
        self.teacher = EMATeacher(*parts, momentum=cfg.momentum, momentum_end=1.0)
        for block in self.teacher[0].blocks:
            block.drop_path = 0.0
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("center_patch", torch.zeros(1, cfg.patch_out_dim or cfg.out_dim))

    def temperatures(self, progress: Progress) -> tuple[float, float]:
        """(tau_t of [CLS], tau_t of the patches) at this step."""
        c = self.cfg
        return (warmup_schedule(c.warmup_teacher_temp, c.teacher_temp, progress.epoch,
                                c.warmup_teacher_temp_epochs),
                warmup_schedule(c.warmup_teacher_patch_temp, c.teacher_patch_temp, progress.epoch,
                                c.warmup_teacher_temp_epochs))

    def prepare(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """[2 global crops, local crops...] -> the same, then the masks of the global crops
        [2B, L] (the first crop's B rows, then the second's)."""
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError("iBOT takes 2 global crops of one size, then any local crops: set "
                             "views.n_views=2, or views.n_views=1 plus extra_views entries")
        x, p = views[0], self.backbone.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        c = self.cfg
        masks = draw_masks(2 * x.shape[0], grid, tuple(c.mask_ratio), c.mask_prob, c.masking,
                           generator, x.device)
        return [*views, masks]

    def _heads(self, head: DINOHead, patch_layer: nn.Module, tokens: Tensor, vit: VisionTransformer
               ) -> tuple[Tensor, Tensor]:
        """tokens [N, prefix + L, D] -> ([CLS] logits [N, K], patch logits [N, L, K_patch]): the
        head's MLP once over the pooled output and every patch token."""
        x = torch.cat([pooled(vit, tokens).unsqueeze(1), tokens[:, vit.num_prefix_tokens:]], dim=1)
        # One [N * (1 + L), D] batch, so that a BatchNorm sees every token (main_ibot.py's
        # CustomSequential gives BN the same statistics).
        x = F.normalize(head.mlp(x.flatten(0, 1)).unflatten(0, x.shape[:2]), dim=-1)
        return head.last_layer(x[:, 0]), patch_layer(x[:, 1:])

    def forward(self, views: list[Tensor], progress: Progress) -> Output:
        *crops, masks = views
        if masks.dtype != torch.bool or len(crops) < 2:
            raise ValueError("iBOT's inputs are its crops then their masks, as its prepare gives")
        b, c = crops[0].shape[0], self.cfg
        globals_ = torch.cat(crops[:2])  # [2B, C, H, W]
        tokens = self.backbone.forward_tokens(globals_, mask=masks, mask_token=self.mask_token)
        s_cls, s_patch = self._heads(self.head, self._patch_layer(), tokens, self.backbone)
        if len(crops) > 2:  # local crops: unmasked, [CLS] only (main_ibot.py's student_local_cls)
            s_cls = torch.cat([s_cls, self.head(encode_crops(self.backbone, crops[2:]))])
        with torch.no_grad():
            t_vit, t_head = self.teacher[0], self.teacher[1]
            t_patch_layer = t_head.last_layer if c.shared_head else self.teacher[2]
            t_cls, t_patch = self._heads(t_head, t_patch_layer, t_vit.forward_tokens(globals_), t_vit)
            t_cls, t_patch = t_cls.float(), t_patch.float()
            # Means over the global batch, applied after the step (the loss uses the old centres).
            batch_center = all_reduce_mean(t_cls.mean(dim=0, keepdim=True))
            batch_center_patch = all_reduce_mean(t_patch.mean(dim=(0, 1)).unsqueeze(0))
        temp, temp_patch = self.temperatures(progress)
        loss_cls, _ = dino_loss(s_cls.unflatten(0, (len(crops), b)), t_cls.unflatten(0, (2, b)),
                            self.center, c.student_temp, temp)
        loss_patch = patch_loss(s_patch, t_patch, masks, self.center_patch, c.student_temp, temp_patch)
        loss = c.cls_weight * loss_cls + c.patch_weight * loss_patch
        with torch.no_grad():  # ln K: a uniform teacher, which has nothing to teach
            p_t = F.softmax((t_cls - self.center) / temp, dim=-1)
            entropy = -(p_t * p_t.clamp_min(1e-30).log()).sum(dim=-1).mean()
        return Output(loss, {"cls": loss_cls.detach(), "patch": loss_patch.detach(),
                             "teacher_entropy": entropy, "mask_share": masks.float().mean(),
                             "teacher_temp": temp, "teacher_patch_temp": temp_patch},
                      {"center": batch_center, "center_patch": batch_center_patch})

    def _patch_layer(self) -> nn.Module:
        return self.head.last_layer if self.cfg.shared_head else self.patch_layer

    def on_after_backward(self, progress: Progress) -> None:
        # The last layer(s) stay at their init during the first epoch(s) (main_ibot.py's
        # cancel_gradients_last_layer, which drops every parameter named last_layer*).
        if progress.epoch < self.cfg.freeze_last_layer:
            for p in [*self.head.last_layer.parameters(), *self._patch_layer().parameters()]:
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, progress: Progress, state: dict[str, Tensor]) -> None:
        self.teacher.update(progress)
        m = self.cfg.center_momentum
        self.center.mul_(m).add_(state["center"], alpha=1 - m)
        self.center_patch.mul_(m).add_(state["center_patch"], alpha=1 - m)
