"""One optimizer step and the loss bookkeeping around it, shared by pretraining (every parameter
set of every method) and fine-tuning: backward into the set's parameters, clip, step; losses
summed on the device and read only at log points; a NaN or Inf loss stops the run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from selfsup.errors import SelfsupError


class TrainingDiverged(SelfsupError, RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


def backward_step(loss: Tensor, optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                  grad_clip: float | None = None, after_backward: Callable[[], None] | None = None
                  ) -> None:
    """Gradients of `loss` for `params` only (another set's parameters, which the loss may also
    reach, are left alone), `after_backward()`, clipping of their global norm, the step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(params))
    if after_backward is not None:
        after_backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


class LossWindow:
    """Sums of named losses since the last read, kept on the device so that a step needs no host
    sync; `read` gives their means (one sync) and starts a new window."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, losses: dict[str, Tensor]) -> None:
        for name, value in losses.items():
            value = value.detach()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def read(self) -> dict[str, float]:
        means = {k: v.item() / max(1, self.steps) for k, v in self.sums.items()}
        self.sums, self.steps = {}, 0
        return means


def check_finite(losses: dict[str, float], where: str, advice: str) -> None:
    """TrainingDiverged naming each non-finite loss, `where` it happened and what to try."""
    bad = [f"{name} loss is {value}" for name, value in losses.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDiverged(f"{', '.join(bad)} {where}; stopping. {advice}")
