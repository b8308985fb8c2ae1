"""Optimizers (SGD, AdamW, LARS), parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

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


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_norm: bool) -> list[dict]:
    """Two groups: weights, and 1-d parameters (biases, norm scales) which get no weight decay and
    no LARS adaptation when `exclude_bias_norm`. `decay` marks the group a weight-decay schedule
    drives. Parameters that take no gradient (EMA teachers) are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_bias_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "decay": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "decay": False, "lars_exclude": True})
    return groups


def peak_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    return base_lr


def build_optimizer(model: nn.Module, tcfg, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, tcfg.weight_decay, tcfg.wd_exclude_bias_norm)
    if tcfg.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay,
                    trust_coef=tcfg.lars_trust)
    for g in groups:
        g.pop("lars_exclude", None)
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=tcfg.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(tcfg.betas), foreach=True)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warm-up from ~0 to `peak`, then half-cosine down to `floor` (SGDR, Loshchilov &
    Hutter 2017, without restarts)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
