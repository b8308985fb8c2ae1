"""End-to-end fine-tuning: the pretrained backbone plus a linear head, all weights trained.

The recipe is MAE's (He et al. 2021, https://arxiv.org/abs/2111.06377, App. A.3 and Table 9;
official code facebookresearch/mae: main_finetune.py, util/lr_decay.py, util/lr_sched.py):
AdamW, base lr per 256 images scaled linearly with the batch, layer-wise lr decay (ELECTRA,
Clark et al. 2020; BEiT, Bao et al. 2021 §2.3), linear warm-up then half-cosine, label smoothing
0.1 (Szegedy et al. 2016 §7), stochastic depth on ViT blocks, weight decay 0.05 on weights only.
Omitted: RandAugment, mixup, cutmix and random erasing (MAE's ImageNet setting uses them; at
CPU scale a light random-resized crop + flip is the usual augmentation). The head takes the
backbone's own pooled output (ViT: final norm then token mean, or the class token; ResNet:
global average pool); MAE's global-pool variant puts its norm after the mean instead.

Works for every backbone: depths for layer decay are assigned in `layer_depths`, keyed on
parameter-name prefixes (ViT `patch_embed`/`cls_token`/`blocks.i`, ResNet `stem`/`layer1..4`);
any other backbone is one group at the full lr, and the protocol string says so.
A random-init baseline is the same call on an untrained backbone (`selfsup eval finetune
--random-init`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from selfsup.device import autocast
from selfsup.eval.features import extract_features, kept_modes, module_device
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.subsets import stratified_subset
from selfsup.protocol import Progress, hook
from selfsup.schedules import warmup_cosine
from selfsup.train.optim import build_optimizer, param_groups, set_lr
from selfsup.train.step import LossWindow, backward_step, check_finite
from selfsup.views import ViewConfig, build_views


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; each default's source is noted (MAE = He et al. 2021, Table 9 and
    the official FINETUNE.md / main_finetune.py).

    epochs: passes over the (sub)set, may be fractional (MAE ViT-B: 100).
    batch_size: images per step (MAE: 1024; 256 gives small sets more steps, and the linear lr
        scaling keeps the per-image lr the same).
    optimizer: adamw (MAE) | sgd (momentum, for those who prefer it on ResNets).
    lr: base lr per 256 images; peak lr = lr * batch_size / 256 (MAE blr 1e-3, Table 9;
        FINETUNE.md uses 5e-4 for ViT-B).
    weight_decay: decoupled decay of weights; biases and norms (1-d params) get none (MAE 0.05).
    betas: AdamW betas (MAE: 0.9, 0.999). momentum: SGD momentum.
    layer_decay: lr of depth l is peak * layer_decay ** (head_depth - l) (MAE Table 9: 0.75;
        FINETUNE.md: 0.65 for ViT-B); 1.0 turns it off.
    warmup_epochs: linear warm-up (MAE: 5), then half-cosine to min_lr.
    min_lr: floor of the cosine as a fraction of each group's peak (MAE: 1e-6 absolute, 2.5e-4
        of its 4e-3 peak; 0 differs by nothing measurable).
    label_smoothing: MAE: 0.1.
    drop_path: ViT stochastic depth of the last block, rising linearly from 0 over blocks as in
        DeiT (MAE ViT-B/L: 0.1); ignored for backbones without `blocks`.
    grad_clip: clip the global gradient norm (null: off, as MAE).
    size: training crop and test side (null: the images' stored size; the CLI passes eval.size
        or views.size).
    scale, ratio: random-resized-crop area fraction and aspect range (MAE: 0.08-1, 3/4-4/3).
    flip_p: horizontal-flip probability (null: 0.5 here; the CLI uses the run's views.flip_p, so
        digits, where a mirrored glyph is another class, stay unflipped).
    train_subset: fine-tune on this many training images, seeded and class-stratified (null: all).
    test_subset: evaluate on this many test images, seeded and class-stratified (null: all).
    eval_batch_size: images per forward when evaluating.
    channels_last: NHWC memory format for convolutions (as trainer.channels_last).
    seed: fixes subsets, head init, data order, augmentation and drop-path draws.
    log_every: steps between progress-bar loss updates (the loop's only host sync).
    gen_weight: add the pretraining method's own loss on every fine-tuning batch, times this
        weight, to the classification loss (iGPT §3.3 sums L_GEN and L_CLF; 0: off). Needs a
        method whose loss takes one view; its heads (iGPT's generative head) train too.
    """

    epochs: float = 100
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    layer_decay: float = 0.75
    warmup_epochs: float = 5
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    grad_clip: Optional[float] = None
    size: Optional[int] = None
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_p: Optional[float] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    eval_batch_size: int = 512
    channels_last: bool = True
    seed: int = 0
    log_every: int = 20
    gen_weight: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"eval.finetune.{name}={getattr(self, name)!r}: {why}")

        if self.optimizer not in ("adamw", "sgd"):
            bad("optimizer", "must be adamw or sgd")
        if self.epochs <= 0:
            bad("epochs", "must be positive")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        if self.lr <= 0:
            bad("lr", "must be positive")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            bad("weight_decay" if self.weight_decay < 0 else "warmup_epochs", "must be >= 0")
        if not 0 < self.layer_decay <= 1:
            bad("layer_decay", "must be in (0, 1]")
        if not 0 <= self.min_lr <= 1:
            bad("min_lr", "is a fraction of the peak lr, in [0, 1]")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.drop_path < 1:
            bad("drop_path", "must be in [0, 1)")
        if self.gen_weight < 0:
            bad("gen_weight", "must be >= 0")
        if len(self.betas) != 2:
            bad("betas", "needs two values")
        for name in ("size", "train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(name, "must be at least 1 (or null)")
        if self.flip_p is not None and not 0 <= self.flip_p <= 1:
            bad("flip_p", "a probability must lie in [0, 1]")
        # The crop's own checks (scale within (0, 1], ordered pairs), named under this section.
        try:
            ViewConfig(n_views=1, scale=list(self.scale), ratio=list(self.ratio))
        except ValueError as e:
            raise ValueError(f"eval.finetune: {e}".replace("ViewConfig.", "")) from None


# ----------------------------------------------------------------------------- layer decay


def layer_depths(backbone: nn.Module) -> tuple[dict[str, int], int, str]:
    """Depth of each backbone parameter for layer-wise lr decay, the head's depth, and a phrase
    for the protocol. Following BEiT / MAE (util/lr_decay.py), for a ViT with n blocks:
    patch_embed, cls_token, pos_embed -> 0, blocks.i -> i + 1, the rest (final norm) and the
    head -> n + 1. For a ResNet: stem -> 0, layer1..4 -> 1..4, head -> 5. Anything else: every
    parameter at depth 0 with head depth 0, i.e. one group at the full lr."""
    names = [n for n, _ in backbone.named_parameters()]
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and hasattr(backbone, "patch_embed"):
        top = len(blocks) + 1

        def depth(n: str) -> int:
            if n.startswith(("patch_embed", "cls_token", "pos_embed")):
                return 0
            if n.startswith("blocks."):
                return int(n.split(".")[1]) + 1
            return top

        return {n: depth(n) for n in names}, top, f"{top + 1} depths: embedding, {len(blocks)} blocks, norm + head"
    stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
    if all(isinstance(getattr(backbone, s, None), nn.Module) for s in stages):
        prefix = {s: i for i, s in enumerate(stages)}
        return ({n: prefix.get(n.split(".")[0], len(stages)) for n in names}, len(stages),
                "6 depths: stem, layer1..layer4, head")
    return {n: 0 for n in names}, 0, f"not applied: {type(backbone).__name__} has no known depth order, one group"


class Classifier(nn.Module):
    """backbone -> pooled [B, D] -> linear head -> logits [B, num_classes].

    The head starts at trunc-normal std 2e-5 weights and zero bias (MAE main_finetune.py), i.e.
    near-zero logits, so the first steps do not push large random gradients into the backbone."""

    def __init__(self, backbone: nn.Module, num_classes: int, generator: torch.Generator | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.dim), num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, H, W] -> [B, num_classes]
        return self.head(self.backbone(x))


def finetune_optimizer(model: Classifier, cfg: FinetuneConfig, peak: float,
                       extra: list[tuple[str, nn.Parameter]] = ()) -> torch.optim.Optimizer:
    """One parameter group per (depth, decay or not), each with its `lr_scale` and `depth`; the
    weight-decay rule is pretraining's (`train.optim.decays`: none on biases, norms and learned
    tokens, as MAE's param_groups_lrd with the ViT's no_weight_decay list). `extra` (name,
    parameter) pairs (the method's heads, for gen_weight) sit at the top, with the head."""
    depths, top, _ = layer_depths(model.backbone)

    def depth(name: str) -> int:  # the head sits at the top
        return depths[name[len("backbone."):]] if name.startswith("backbone.") else top

    groups = param_groups([*model.named_parameters(), *extra], cfg.weight_decay, depth=depth,
                          top=top, layer_decay=cfg.layer_decay)
    return build_optimizer(groups, cfg.optimizer, peak, momentum=cfg.momentum, betas=cfg.betas)


# ----------------------------------------------------------------------------- data


def _set_drop_path(backbone: nn.Module, rate: float) -> list[float] | None:
    """Sets ViT blocks' stochastic depth to rise linearly 0 -> rate (DeiT, as vit.py does at
    build time); returns the previous rates, or None for a backbone without such blocks."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(hasattr(b, "drop_path") for b in blocks):
        return None
    old = [float(b.drop_path) for b in blocks]
    for b, r in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist()):
        b.drop_path = r
    return old


# ----------------------------------------------------------------------------- fine-tuning


def finetune(backbone: nn.Module, train_set, test_set, mean, std, cfg: FinetuneConfig = FinetuneConfig(),
             device: torch.device | str | None = None, precision: str = "fp32", progress: bool = False,
             description: str | None = None, method: nn.Module | None = None) -> dict:
    """Fine-tunes `backbone` (in place; pass a copy to keep it) with a new linear head.

    Args:
        backbone: module following the backbone contract (`dim`, forward -> [B, dim]).
        train_set, test_set: labelled ImageSets (uint8 [N, C, H, W] + int64 labels).
        mean, std: per-channel normalisation in [0, 1] units (the run's normalization.json).
        cfg: `FinetuneConfig`.
        device: where to train (default: the backbone's device); the images are moved there once.
        precision: "fp32" or "bf16" (autocast; the CLI asks `resolve_precision`).
        progress: show a tqdm bar over the steps.
        description: where the weights came from, added to "protocol" (e.g. "random init").
        method: the pretraining method around `backbone` (method.backbone is backbone), whose
            loss on each batch is added with cfg.gen_weight; needed when gen_weight > 0.

    Returns:
        {"top1", "top5" (>= 5 classes), "train_top1" (clean, on the fine-tuning images), "loss"
         (mean training loss of the last log window), "lr" (peak), "epochs", "steps",
         "train_images", "test_images", "train_time_s" (subsets, set-up and training), "time_s"
         (and evaluation), "protocol"}.
    """
    cfg.validate()
    if train_set.labels is None or test_set.labels is None:
        raise ValueError("finetune: the training and test sets need labels")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"finetune: precision must be fp32 or bf16, got {precision!r}")
    if cfg.gen_weight > 0 and (method is None or method.backbone is not backbone):
        raise ValueError("finetune: eval.finetune.gen_weight > 0 needs the method around the backbone")
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else module_device(backbone)
    backbone.to(device)
    c = max(train_set.num_classes, test_set.num_classes)
    tr_idx = stratified_subset(train_set.labels, cfg.seed, total=cfg.train_subset)[0] if cfg.train_subset else None
    te_idx = stratified_subset(test_set.labels, cfg.seed + 1, total=cfg.test_subset)[0] if cfg.test_subset else None
    train = train_set.subset(tr_idx) if tr_idx is not None else train_set
    test = test_set.subset(te_idx) if te_idx is not None else test_set
    images, labels = train.images.to(device), train.labels.to(device)
    n = len(train)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # the last short batch is dropped, as MAE's loader does
    total = max(1, round(cfg.epochs * steps_per_epoch))
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    peak = cfg.lr * bs / 256
    size = cfg.size or images.shape[-1]
    flip_p = 0.5 if cfg.flip_p is None else cfg.flip_p
    views = build_views(ViewConfig(n_views=1, size=size, scale=list(cfg.scale), ratio=list(cfg.ratio),
                                   flip_p=flip_p, jitter_p=0.0, gray_p=0.0), mean, std)

    torch.manual_seed(cfg.seed)  # drop-path draws use the global generator
    init_gen = torch.Generator().manual_seed(cfg.seed)
    model = Classifier(backbone, c, init_gen).to(device)
    conv = any(p.dim() == 4 for p in model.parameters())
    layout = torch.channels_last if cfg.channels_last and conv else torch.contiguous_format
    model = model.to(memory_format=layout)
    _, _, depth_text = layer_depths(backbone)
    old_rates = _set_drop_path(backbone, cfg.drop_path)
    gen = cfg.gen_weight > 0
    extra = [(f"method.{n}", p) for n, p in method.named_parameters()
             if p.requires_grad and not n.startswith("backbone.")] if gen else []
    optimizer = finetune_optimizer(model, cfg, peak, extra)
    params = [p for p in model.parameters() if p.requires_grad] + [p for _, p in extra]
    prepare = hook(method, "prepare") if gen else None
    aug = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    order = torch.Generator().manual_seed(cfg.seed + 3)
    window, loss_value = LossWindow(), float("nan")
    try:
        bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not progress, dynamic_ncols=True)
        with kept_modes(backbone), bar:  # the backbone's flags are given back as found
            model.train()
            for step in range(total):
                i = step % steps_per_epoch
                if i == 0:
                    perm = torch.randperm(n, generator=order).to(device)
                idx = perm[i * bs:(i + 1) * bs]
                with torch.no_grad():
                    x = views(images[idx], aug)[0].contiguous(memory_format=layout)  # [B, C, S, S]
                lr = warmup_cosine(step, total, warmup, peak, cfg.min_lr * peak)
                set_lr(optimizer, lr)  # times each group's lr_scale: the whole schedule scales
                with autocast(device, precision):
                    logits = model(x)
                    if gen:  # the method's loss on the same batch (L_GEN of iGPT §3.3)
                        with torch.no_grad():
                            inputs = prepare([x], aug) if prepare else [x]
                        gen_loss = method(inputs, Progress(step, steps_per_epoch, total)).loss
                loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=cfg.label_smoothing)
                losses = {"fine-tuning": loss}
                if gen:
                    losses["generative"] = gen_loss.detach()
                    loss = loss + cfg.gen_weight * gen_loss
                backward_step(loss, optimizer, params, cfg.grad_clip)
                window.add(losses)
                bar.update(1)
                if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                    means = window.read()
                    check_finite(means, f"at step {step + 1}",
                                 "Try a lower eval.finetune.lr or eval.finetune.grad_clip.")
                    loss_value = means["fine-tuning"]
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
        train_time = time.perf_counter() - start_time  # the loss read above waited for the last step
    finally:
        if old_rates is not None:
            for b, r in zip(backbone.blocks, old_rates):
                b.drop_path = r

    def top(ds) -> dict:
        scores = extract_features(model, ds.images, mean, std, batch_size=cfg.eval_batch_size, device=device,
                                  precision=precision, size=size)
        return topk_accuracy(scores, ds.labels.to(device))

    result = {**top(test), "train_top1": top(train)["top1"], "loss": loss_value, "lr": peak,
              "epochs": cfg.epochs, "steps": total, "train_images": n, "test_images": len(test),
              "train_time_s": round(train_time, 1), "time_s": round(time.perf_counter() - start_time, 1)}
    opt = (f"AdamW (betas {cfg.betas[0]:g}, {cfg.betas[1]:g})" if cfg.optimizer == "adamw"
           else f"SGD (momentum {cfg.momentum:g})")
    pool = {"cls": "class token", "mean": "mean of the final tokens"}.get(
        getattr(backbone, "pool", None), "global average pool" if hasattr(backbone, "layer4") else "pooled output")
    dp = (f"drop path {cfg.drop_path:g} (last block, linear over blocks)" if old_rates is not None
          else "no drop path (backbone has no ViT blocks)")

    def subset(idx, full) -> str:
        return f" (seeded, class-stratified subset of {len(full)})" if idx is not None else ""

    result["protocol"] = (
        f"fine-tune: {type(backbone).__name__} + linear head (trunc-normal std 2e-5, zero bias) on the "
        f"{pool}, all weights trained; {opt}, peak lr {peak:g} (= {cfg.lr:g} x {bs}/256), "
        f"layer-wise lr decay {cfg.layer_decay:g} ({depth_text}), weight decay {cfg.weight_decay:g} "
        f"(none on biases and norms), {cfg.warmup_epochs:g} warm-up epochs then cosine to "
        f"{f'{cfg.min_lr:g} x peak' if cfg.min_lr else '0'}; cross-entropy with label smoothing {cfg.label_smoothing:g}"
        f"{f' plus {cfg.gen_weight:g} x the pretraining loss on each batch' if gen else ''}; {dp}"
        f"{f', grad clip {cfg.grad_clip:g}' if cfg.grad_clip else ''}; {cfg.epochs:g} epochs = {total} steps of "
        f"batch {bs}; augmentation: random resized crop to {size} px (scale {list(cfg.scale)}, ratio "
        f"[{cfg.ratio[0]:.3g}, {cfg.ratio[1]:.3g}]), flip p={flip_p:g}, no RandAugment/mixup/cutmix/erasing; "
        f"{precision}; train={n}{subset(tr_idx, train_set)}, "
        f"test={len(test)}{subset(te_idx, test_set)}, classes={c}; top-1 after the last "
        f"step (no selection on test), seed {cfg.seed}" + (f"; weights: {description}" if description else "")
    )
    return result
