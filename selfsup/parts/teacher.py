"""The exponential-moving-average teacher: MoCo's key encoder, BYOL's target, DINO's teacher.

A frozen copy of a chain of student modules (backbone, then heads) whose weights follow the
students' after every optimizer step: theta_t <- m * theta_t + (1 - m) * theta_s (MoCo, He et
al. 2019, eq. 2), with m constant or rising along a half cosine to its end value at the last
step (BYOL §3.2, DINO §3.1, MoCo v3). Only parameters are averaged; the teacher's BatchNorm
statistics come from its own forward passes, as in the official MoCo, BYOL and DINO code.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from selfsup.protocol import Progress
from selfsup.schedules import cosine_schedule


class EMATeacher(nn.Sequential):
    """Frozen copies of `students`, applied in order: `teacher(x) = copy_n(...copy_1(x))`, and
    `teacher[i]` is the copy of `students[i]`.

    momentum: m of the update after the first step. momentum_end: m after the last step, reached
        along a half cosine (null: m stays constant, as in MoCo v2).
    The copies take no gradient and are outside every optimizer; the method calls `update` in its
    `on_step_end`. The students are referred to, not owned: the method registers them itself.
    """

    def __init__(self, *students: nn.Module, momentum: float, momentum_end: Optional[float] = None):
        super().__init__(*[copy.deepcopy(s) for s in students])
        for name, m in (("momentum", momentum), ("momentum_end", momentum_end)):
            if m is not None and not 0.0 <= m <= 1.0:
                raise ValueError(f"teacher {name} must lie in [0, 1], got {m}")
        self.requires_grad_(False)
        self.students = list(students)  # a plain list: not submodules, so not saved twice
        self.start, self.end = momentum, momentum_end

    def momentum(self, progress: Progress) -> float:
        """m of the update made after step `progress.step`."""
        if self.end is None:
            return self.start
        return cosine_schedule(self.start, self.end, progress.update_fraction)

    @torch.no_grad()
    def update(self, progress: Progress) -> float:
        """teacher <- m * teacher + (1 - m) * students, parameter by parameter; returns m.
        m = 1 leaves the teacher unchanged, m = 0 copies the students."""
        m = self.momentum(progress)
        t_params = list(self.parameters())
        s_params = [p.detach() for s in self.students for p in s.parameters()]
        if len(t_params) != len(s_params):
            raise ValueError(f"teacher has {len(t_params)} parameters, its students {len(s_params)}")
        torch._foreach_lerp_(t_params, s_params, 1.0 - m)
        return m
