"""Optimizers (SGD, AdamW, LARS), their parameter groups and the one weight-decay rule, for
pretraining and fine-tuning alike."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017,
    https://arxiv.org/abs/1708.03888), as used by SimCLR and BYOL: each weight's update is scaled by
    trust_coef * ||w|| / ||g + wd*w||. Groups with `lars_exclude=True` (biases, norms) get plain
    momentum SGD, the exclusion SimCLR's appendix B.1 describes."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coef: float = 1e-3):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                w_norm = torch._foreach_norm(params)
                g_norm = torch._foreach_norm(grads)
                for g, wn, gn in zip(grads, w_norm, g_norm):
                    # Where either norm is 0 (fresh zero-init weights) the ratio falls back to 1.
                    ok = (wn > 0) & (gn > 0)
                    g.mul_(torch.where(ok, group["trust_coef"] * wn / gn.clamp_min(1e-12), 1.0))
            bufs = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                bufs.append(state["momentum_buffer"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


# Learned tokens and position embeddings get no weight decay (the no_weight_decay lists of the
# official MAE, BEiT and DINO ViTs), like biases and norm scales.
NO_DECAY = ("cls_token", "mask_token", "pos_embed")


def decays(name: str, p: torch.Tensor) -> bool:
    """The one weight-decay rule, for pretraining and fine-tuning alike: weight matrices and
    kernels decay; 1-d parameters (biases, norm scales) and learned tokens do not."""
    return p.ndim > 1 and name.rsplit(".", 1)[-1] not in NO_DECAY


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 exclude_bias_norm: bool = True, depth: Callable[[str], int] | None = None,
                 top: int = 0, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer groups of the trainable parameters in `named` ((name, parameter) pairs).

    exclude_bias_norm: parameters that `decays` exempts get no weight decay and no LARS
        adaptation (SimCLR appendix B.1); False: every parameter decays.
    depth, top, layer_decay: layer-wise lr decay (fine-tuning): the parameter called n gets
        lr_scale = layer_decay ** (top - depth(n)); without `depth` every lr_scale is 1.
    Each group carries `weight_decay`, `decay` (whether a weight-decay schedule drives it),
    `lars_exclude` and `lr_scale`; `set_lr` applies the schedule through them.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        decay = decays(name, p) or not exclude_bias_norm
        d = depth(name) if depth is not None else 0
        g = groups.setdefault((d, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "decay": decay,
            "lars_exclude": not decay, "lr_scale": layer_decay ** (top - d), "depth": d})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def peak_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    return base_lr


def build_optimizer(groups: list[dict], optimizer: str, lr: float, momentum: float = 0.9,
                    betas: Sequence[float] = (0.9, 0.999), lars_trust: float = 1e-3
                    ) -> torch.optim.Optimizer:
    """sgd (momentum), adamw or lars over `param_groups` groups (each at lr x its lr_scale),
    foreach implementations."""
    groups = [{**g, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    if optimizer == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coef=lars_trust)
    groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=True)
    raise ValueError(f"optimizer must be sgd, adamw or lars, got {optimizer!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """This step's learning rate (times each group's lr_scale) and, when scheduled, weight decay
    (of the groups that decay)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if weight_decay is not None and g.get("decay", True):
            g["weight_decay"] = weight_decay
