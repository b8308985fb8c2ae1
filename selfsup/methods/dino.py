"""DINO: Emerging Properties in Self-Supervised Vision Transformers (self-distillation, no labels).

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, 2021. https://arxiv.org/abs/2104.14294

A student (backbone + DINO head) is trained to predict, from every crop of an image, the output
distribution that a teacher gives on the image's two global crops (Algorithm 1). The teacher is
an exponential moving average of the student (§3.1, "Teacher network"); collapse is avoided by
centring and sharpening the teacher's outputs (§3.1, "Avoiding collapse"). Multi-crop (§3.1,
following SwAV): the student also sees small local crops, the teacher only the global ones, which
encourages "local-to-global" correspondences. Details follow the official code
(facebookresearch/dino: main_dino.py DINOLoss, vision_transformer.py DINOHead, utils.py
MultiCropWrapper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.distributed import all_reduce_mean
from selfsup.losses import dino_loss
from selfsup.parts.heads import DINOHead
from selfsup.parts.multicrop import encode_crops
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Output, Progress
from selfsup.schedules import warmup_schedule


@dataclass
class DINOConfig:
    """name: registry key.
    proj_hidden / proj_dim / head_layers: the head's MLP, `head_layers` linears of width
        `proj_hidden` ending in the `proj_dim` bottleneck (2048 / 256 / 3, the paper's appendix and
        DINOHead's defaults).
    out_dim: K, the size of the output distribution (65536, main_dino.py's default; solo-learn's
        CIFAR recipe uses 4096).
    use_bn: BatchNorm in the head's MLP (off for ViTs; DINO's ResNet-50 runs use it).
    norm_last_layer: fix the norm of each row of the weight-normalised last layer at 1 (true,
        main_dino.py's default; false learns the norms, better for ViT-S but less stable).
    student_temp: tau_s, the student's softmax temperature (0.1, §3.1).
    teacher_temp / warmup_teacher_temp / warmup_teacher_temp_epochs: tau_t rises linearly from
        `warmup_teacher_temp` to `teacher_temp` over the first epochs, then stays (0.04 -> 0.04
        over 30, main_dino.py's defaults; the paper's appendix also uses 0.04 -> 0.07).
    center_momentum: m of the centre c <- m c + (1 - m) mean(teacher outputs) (0.9, eq. 4).
    momentum: the teacher EMA's starting momentum, raised to 1 along a half cosine (0.996, §3.1;
        the official code advises 0.9995 for batches of 256).
    freeze_last_layer: epochs during which the last layer gets no update (1, main_dino.py: it
        "helps training"); may be fractional.
    """

    name: str = "dino"
    proj_hidden: int = 2048
    proj_dim: int = 256
    head_layers: int = 3
    out_dim: int = 65536
    use_bn: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer: float = 1.0

    tiny = ("method.proj_hidden=32", "method.proj_dim=16", "method.out_dim=64")

    def __post_init__(self):
        for name in ("proj_hidden", "proj_dim", "head_layers", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"method.{name} must be positive, got {getattr(self, name)}")
        for name in ("center_momentum", "momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"method.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("warmup_teacher_temp_epochs", "freeze_last_layer"):
            if getattr(self, name) < 0:
                raise ValueError(f"method.{name} must be >= 0, got {getattr(self, name)}")


class DINO(nn.Module):
    config_class = DINOConfig

    def __init__(self, cfg: DINOConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = DINOHead(backbone.dim, cfg.proj_hidden, cfg.proj_dim, cfg.head_layers,
                             cfg.out_dim, bn=cfg.use_bn, learn_norm=not cfg.norm_last_layer)
        # The teacher starts as the student (main_dino.py loads the student's state into it).
        self.teacher = EMATeacher(backbone, self.head, momentum=cfg.momentum, momentum_end=1.0)
        # A buffer, so it is checkpointed; updated in on_step_end from the step's teacher outputs.
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    def teacher_temp(self, progress: Progress) -> float:
        c = self.cfg
        return warmup_schedule(c.warmup_teacher_temp, c.teacher_temp, progress.epoch,
                               c.warmup_teacher_temp_epochs)

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError("DINO takes 2 global crops of one size, then any local crops: set "
                             "views.n_views=2, or views.n_views=1 plus extra_views entries")
        b = views[0].shape[0]
        # The backbone once per crop resolution (so BatchNorm sees each as one batch), the head
        # once on every crop.
        student = self.head(encode_crops(self.backbone, views)).unflatten(0, (len(views), b))
        with torch.no_grad():
            teacher = self.teacher(torch.cat(views[:2])).float().unflatten(0, (2, b))  # [2, B, K]
            # Mean over the global batch; applied after the step, once the loss has used the old c.
            batch_center = all_reduce_mean(teacher.mean(dim=(0, 1)).unsqueeze(0))
        temp = self.teacher_temp(progress)
        loss, entropy = dino_loss(student, teacher, self.center, self.cfg.student_temp, temp)
        return Output(loss, {"teacher_entropy": entropy.detach(), "kl": (loss - entropy).detach(),
                             "teacher_temp": temp}, {"center": batch_center})

    def on_after_backward(self, progress: Progress) -> None:
        # The last layer stays at its init during the first epoch(s) (main_dino.py's
        # cancel_gradients_last_layer): dropping the grads also skips its optimizer step.
        if progress.epoch < self.cfg.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, progress: Progress, state: dict[str, torch.Tensor]) -> None:
        self.teacher.update(progress)
        cm = self.cfg.center_momentum
        self.center.mul_(cm).add_(state["center"], alpha=1 - cm)
