"""Exponential-moving-average teachers (MoCo's key encoder, BYOL's target, DINO's teacher).

The teacher is a frozen copy of student modules whose weights follow the student's:
theta_t <- m * theta_t + (1 - m) * theta_s after every optimizer step (MoCo, He et al. 2019,
eq. 2). Only parameters are averaged; the teacher's BatchNorm statistics come from its own
forward passes, as in the official MoCo, BYOL and DINO code.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` that takes no gradient and no optimizer step."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.

    momentum 1 leaves the teacher unchanged; 0 copies the student."""
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - momentum)
