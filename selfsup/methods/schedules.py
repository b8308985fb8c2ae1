"""Where training stands, and the per-step schedules that methods derive from it.

The trainer hands every method a `Progress` at each step; a method's temperatures, momentums and
freezes are pure functions of it, so a resumed run recomputes them instead of restoring them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """step: optimizer steps already taken (0 at the first step). steps_per_epoch, total_steps:
    the run's length."""

    step: int
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional: 0.5 half-way through the first epoch."""
        return self.step / self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the run completed before this step, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def update_fraction(self) -> float:
        """0 at the first step, exactly 1 at the last: for schedules of the updates made after
        each step (EMA momentums), so that the run's last update uses the schedule's end value."""
        return min(1.0, self.step / max(1, self.total_steps - 1))


def cosine_schedule(start: float, end: float, fraction: float) -> float:
    """`start` at fraction 0, `end` at fraction 1, along a half cosine.

    BYOL's target momentum (Grill et al. 2020, §3.2: tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2)
    is `cosine_schedule(tau_base, 1, k/K)`; DINO's momentum and weight-decay schedules and MoCo v3's
    momentum have the same form.
    """
    if fraction >= 1.0:
        return end  # exactly: a momentum of 1.0 must freeze the teacher
    fraction = max(0.0, fraction)
    return start + (end - start) * 0.5 * (1.0 - math.cos(math.pi * fraction))


def warmup_schedule(start: float, end: float, epoch: float, warmup_epochs: float) -> float:
    """Linear from `start` to `end` over `warmup_epochs`, then `end` (DINO's teacher temperature)."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return end
    return start + (end - start) * epoch / warmup_epochs
