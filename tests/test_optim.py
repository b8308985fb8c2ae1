"""LARS, parameter groups and the one weight-decay rule, building optimizers."""

import math

import torch
from torch import nn

from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.train.optim import LARS, build_optimizer, decays, param_groups, peak_lr, set_lr


def test_param_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model.named_parameters(), 1e-4, exclude_bias_norm=True)
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert {p.ndim for p in no_decay["params"]} == {1}
    assert no_decay["weight_decay"] == 0 and no_decay["lars_exclude"] and not no_decay["decay"]
    assert len(param_groups(model.named_parameters(), 1e-4, exclude_bias_norm=False)) == 1


def test_one_decay_rule_for_tokens_in_pretraining_and_fine_tuning():
    vit = build_backbone(BackboneConfig(name="vit_tiny", depth=1, embed_dim=32, num_heads=2, pool="cls"),
                         in_channels=3, image_size=8)
    named = dict(vit.named_parameters())
    assert not decays("cls_token", named["cls_token"])  # [1, 1, D]: no decay although 3-d
    assert not decays("blocks.0.norm1.weight", named["blocks.0.norm1.weight"])
    assert decays("blocks.0.attn.qkv.weight", named["blocks.0.attn.qkv.weight"])
    groups = param_groups(vit.named_parameters(), 0.05)
    no_decay = {id(p) for g in groups if not g["decay"] for p in g["params"]}
    assert id(named["cls_token"]) in no_decay and id(named["patch_embed.weight"]) not in no_decay


def test_layer_decay_scales_and_set_lr_applies_them():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = param_groups(model.named_parameters(), 0.1, depth=lambda n: int(n[0]), top=2,
                          layer_decay=0.5)
    opt = build_optimizer(groups, "adamw", lr=1.0)
    set_lr(opt, 0.2, weight_decay=0.3)
    by_depth = {(g["depth"], g["decay"]): (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert by_depth == {(0, True): (0.2 * 0.25, 0.3), (0, False): (0.2 * 0.25, 0.0),
                        (1, True): (0.2 * 0.5, 0.3), (1, False): (0.2 * 0.5, 0.0)}


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


def test_lr_scaling():
    assert peak_lr(0.3, 512, "linear") == 0.6
    assert math.isclose(peak_lr(0.3, 1024, "sqrt"), 0.6)
    assert peak_lr(0.3, 512, "none") == 0.3


def test_lars_trust_reaches_the_optimizer():
    opt = build_optimizer(param_groups(nn.Linear(3, 2).named_parameters(), 1e-6), "lars", lr=0.1,
                          lars_trust=0.02)
    assert all(g["trust_coef"] == 0.02 for g in opt.param_groups)
