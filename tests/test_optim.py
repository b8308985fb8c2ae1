"""LARS, parameter groups and the learning-rate schedule."""

import math

import torch
from torch import nn

from selfsup.train.optim import LARS, cosine_lr, param_groups, peak_lr


def test_param_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4, exclude_bias_norm=True)
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert {p.ndim for p in no_decay["params"]} == {1}
    assert no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]
    assert len(param_groups(model, 1e-4, exclude_bias_norm=False)) == 1


def test_lars_scales_weights_by_trust_ratio_and_not_excluded_params():
    w = nn.Parameter(torch.full((3, 4), 2.0))
    b = nn.Parameter(torch.ones(4))
    w.grad = torch.full((3, 4), 0.5)
    b.grad = torch.full((4,), 0.5)
    opt = LARS([{"params": [w], "weight_decay": 0.1},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=1.0, trust_coef=1e-3)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt.step()
    g = w.grad + 0.1 * w0  # weight decay enters before the trust ratio
    expected = w0 - 1e-3 * w0.norm() / g.norm() * g
    assert torch.allclose(w, expected)
    assert torch.allclose(b, b0 - 0.5)  # plain SGD for the excluded bias


def test_lars_momentum_accumulates():
    p = nn.Parameter(torch.ones(2))
    opt = LARS([{"params": [p], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1, momentum=0.9)
    for _ in range(2):
        p.grad = torch.ones(2)
        opt.step()
    assert torch.allclose(p, torch.ones(2) - 0.1 * (1 + 1.9))


def test_cosine_schedule_end_points():
    peak, floor = 1.0, 0.1
    assert math.isclose(cosine_lr(0, 100, 10, peak, floor), 0.1)
    assert math.isclose(cosine_lr(9, 100, 10, peak, floor), peak)
    assert math.isclose(cosine_lr(10, 100, 10, peak, floor), peak)
    assert math.isclose(cosine_lr(100, 100, 10, peak, floor), floor)
    mid = cosine_lr(55, 100, 10, peak, floor)
    assert math.isclose(mid, floor + (peak - floor) / 2)
    assert math.isclose(cosine_lr(0, 100, 0, peak, floor), peak)


def test_lr_scaling():
    assert peak_lr(0.3, 512, "linear") == 0.6
    assert math.isclose(peak_lr(0.3, 1024, "sqrt"), 0.6)
    assert peak_lr(0.3, 512, "none") == 0.3


def test_trainer_lars_trust_reaches_the_optimizer():
    from types import SimpleNamespace

    from selfsup.train.optim import build_optimizer

    t = SimpleNamespace(weight_decay=1e-6, wd_exclude_bias_norm=True, optimizer="lars",
                        momentum=0.9, lars_trust=0.02, betas=[0.9, 0.999])
    opt = build_optimizer(nn.Linear(3, 2), t, lr=0.1)
    assert all(g["trust_coef"] == 0.02 for g in opt.param_groups)
