"""The schedules every part of the project shares: the half cosine, a linear warm-up, and the two
joined as the learning-rate schedule.

Pure functions of where training stands (a step, an epoch or a fraction of the run), so a resumed
run recomputes them instead of restoring them. The trainer's learning rate, DINO's teacher
temperature, the EMA momentums, the weight-decay schedule, fine-tuning and the linear probe all
use these three and nothing else.
"""

from __future__ import annotations

import math


def cosine_schedule(start: float, end: float, fraction: float) -> float:
    """`start` at fraction 0, `end` at fraction 1, along a half cosine (SGDR, Loshchilov & Hutter
    2017, without restarts); clamped outside [0, 1].

    BYOL's target momentum (Grill et al. 2020, §3.2: tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2)
    is `cosine_schedule(tau_base, 1, k/K)`; DINO's momentum and weight-decay schedules, MoCo v3's
    momentum and every learning-rate decay here have the same form.
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


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """The learning rate of `step` (0-based): a linear warm-up from peak / warmup_steps to `peak`
    over the first `warmup_steps` steps (Goyal et al. 2017, §2.2), then a half cosine from `peak`
    to `floor` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine_schedule(peak, floor, (step - warmup_steps) / max(1, total_steps - warmup_steps))
