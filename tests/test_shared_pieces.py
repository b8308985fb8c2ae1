"""The pieces methods share: schedules, the EMA teacher, the feature queue, MLP heads, the
multi-crop runner, extra views, and the trainer's weight-decay schedule."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from selfsup.config import ConfigError, build_config, load_config, view_configs
from selfsup.parts.heads import mlp
from selfsup.parts.multicrop import encode_crops, resolution_runs
from selfsup.parts.queue import FeatureQueue
from selfsup.parts.teacher import EMATeacher
from selfsup.protocol import Progress
from selfsup.schedules import cosine_schedule, warmup_cosine, warmup_schedule
from selfsup.views import build_view_set


def test_progress_epoch_and_fraction():
    p = Progress(step=15, steps_per_epoch=10, total_steps=40)
    assert p.epoch == 1.5 and p.fraction == 15 / 40
    assert Progress(50, 10, 40).fraction == 1.0


def test_cosine_schedule_end_points_and_midpoint():
    assert cosine_schedule(0.996, 1.0, 0.0) == 0.996
    assert cosine_schedule(0.996, 1.0, 1.0) == 1.0
    assert math.isclose(cosine_schedule(0.04, 0.4, 0.5), 0.22)
    # BYOL's formula, tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2, at a few steps
    for k in (0, 3, 7, 10):
        byol = 1 - (1 - 0.99) * (math.cos(math.pi * k / 10) + 1) / 2
        assert math.isclose(cosine_schedule(0.99, 1.0, k / 10), byol)
    assert cosine_schedule(0.5, 1.0, 2.0) == 1.0  # clamped past the end


def test_warmup_schedule():
    assert warmup_schedule(0.04, 0.07, 0, 30) == 0.04
    assert math.isclose(warmup_schedule(0.04, 0.07, 15, 30), 0.055)
    assert warmup_schedule(0.04, 0.07, 30, 30) == 0.07
    assert warmup_schedule(0.04, 0.07, 100, 30) == 0.07
    assert warmup_schedule(0.04, 0.07, 0, 0) == 0.07


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_teacher_is_a_frozen_copy_of_the_chain():
    backbone, head = _net(), nn.Linear(2, 3)
    teacher = EMATeacher(backbone, head, momentum=0.9)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in [*backbone.parameters(), *head.parameters()])
    for a, b in zip(teacher.parameters(), [*backbone.parameters(), *head.parameters()]):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    x = torch.randn(5, 4)
    assert torch.equal(teacher(x), head(backbone(x)))  # the chain, in order
    assert set(teacher.state_dict()) == {f"0.{k}" for k in backbone.state_dict()} | {"1.weight", "1.bias"}
    parent = nn.Module()
    parent.backbone, parent.teacher = backbone, teacher
    assert not any(k.startswith("teacher.students") for k in parent.state_dict())  # not saved twice


def test_teacher_update_follows_the_ema_rule_and_its_schedule():
    student = _net()
    teacher = EMATeacher(student, momentum=0.9, momentum_end=1.0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    assert teacher.update(Progress(0, 10, 11)) == 0.9  # the first update: the start momentum
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    middle = [p.clone() for p in teacher.parameters()]
    assert teacher.update(Progress(10, 10, 11)) == 1.0  # the last: exactly 1, the teacher stays
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), middle))
    assert math.isclose(teacher.momentum(Progress(5, 10, 11)), 0.95)
    constant = EMATeacher(student, momentum=0.0)  # MoCo v2's constant momentum; 0 copies
    assert constant.momentum(Progress(7, 10, 11)) == 0.0
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    constant.update(Progress(7, 10, 11))
    assert all(torch.equal(t, s) for t, s in zip(constant.parameters(), student.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(student, momentum=1.5)


def test_queue_fifo_contents():
    q = FeatureQueue(size=5, dim=3)
    assert torch.allclose(q.features.norm(dim=1), torch.ones(5))
    a = torch.arange(6.0).reshape(2, 3)
    q.push(a)
    assert torch.equal(q.features[:2], a) and int(q.ptr) == 2
    b = torch.arange(6.0, 15.0).reshape(3, 3)
    q.push(b)
    assert torch.equal(q.features, torch.cat([a, b])) and int(q.ptr) == 0
    c = torch.full((2, 3), -1.0)
    q.push(c)  # overwrites the two oldest entries
    assert torch.equal(q.features, torch.cat([c, b])) and int(q.ptr) == 2
    d = torch.arange(30.0, 48.0).reshape(6, 3)
    q.push(d)  # more keys than entries: the newest 5, written on from ptr 2 with wrap-around
    assert int(q.ptr) == (2 + 5) % 5
    assert sorted(q.features[:, 0].tolist()) == sorted(d[1:, 0].tolist())
    assert torch.equal(q.features[2], d[1]) and torch.equal(q.features[1], d[5])
    state = q.state_dict()  # the queue and its pointer resume from a checkpoint
    assert set(state) == {"features", "ptr"}
    with pytest.raises(ValueError):
        FeatureQueue(0, 3)


def test_mlp_shapes_and_options():
    head = mlp(16, 32, 8, layers=3)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == 2
    assert head[0].bias is None and head[-1].bias is not None
    v3 = mlp(16, 32, 8, layers=2, last_bn=True)
    assert isinstance(v3[-1], nn.BatchNorm1d) and not v3[-1].affine and v3[-2].bias is None
    gelu = mlp(16, 32, 8, layers=2, bn=False, act="gelu")
    assert isinstance(gelu[1], nn.GELU) and not any(isinstance(m, nn.BatchNorm1d) for m in gelu)
    assert len(mlp(16, 32, 8, layers=1)) == 1
    with pytest.raises(ValueError):
        mlp(16, 32, 8, layers=0)


def test_multicrop_encodes_each_resolution_once_in_view_order():
    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4),
             torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)]
    assert resolution_runs(views) == [(0, 2), (2, 4), (4, 5)]
    calls = []

    def encoder(x):
        calls.append(x.shape[0])
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)  # [N, 1]

    out = encode_crops(encoder, views)
    assert calls == [4, 4, 2]  # one batch per run of same-size crops
    assert torch.equal(out, torch.cat([v.mean(dim=(1, 2, 3)) for v in views]).unsqueeze(1))


def test_warmup_cosine_learning_rate():
    peak, floor = 1.0, 0.1
    assert math.isclose(warmup_cosine(0, 100, 10, peak, floor), 0.1)
    assert math.isclose(warmup_cosine(9, 100, 10, peak, floor), peak)
    assert math.isclose(warmup_cosine(10, 100, 10, peak, floor), peak)
    assert math.isclose(warmup_cosine(100, 100, 10, peak, floor), floor)
    assert math.isclose(warmup_cosine(55, 100, 10, peak, floor), floor + (peak - floor) / 2)
    assert math.isclose(warmup_cosine(0, 100, 0, peak, floor), peak)


def test_extra_views_are_changes_to_views_and_give_multi_crop_shapes():
    cfg = build_config({"views": {"n_views": 1, "size": 24, "blur_p": 1.0},
                        "extra_views": [{"blur_p": 0.1, "solarize_p": 0.2},
                                        {"n_views": 4, "size": 12, "scale": [0.05, 0.3]}]})
    first, second, local = view_configs(cfg)
    assert (second.n_views, second.size, second.blur_p, second.solarize_p) == (1, 24, 0.1, 0.2)
    assert (local.n_views, local.size, local.scale, local.blur_p) == (4, 12, [0.05, 0.3], 1.0)
    views = build_view_set(view_configs(cfg), mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = views(x, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in out] == [(5, 3, 24, 24)] * 2 + [(5, 3, 12, 12)] * 4
    assert not torch.equal(out[2], out[3]), "local crops must be drawn independently"


def test_bad_extra_views_name_the_entry():
    with pytest.raises(ConfigError, match=r"extra_views\.1\.sise"):
        build_config({"extra_views": [{}, {"sise": 8}]})
    with pytest.raises(ConfigError, match=r"extra_views\.0.*solarize_p"):
        build_config({"extra_views": [{"solarize_p": 3.0}]})


def test_weight_decay_follows_its_cosine_schedule(tmp_path):
    from selfsup.train.trainer import Trainer

    cfg = tiny_config("simclr", "trainer.epochs=2", "trainer.optimizer=adamw",
                      "trainer.weight_decay=0.04", "trainer.weight_decay_end=0.4",
                      f"trainer.out={tmp_path}")
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    seen = []
    for step in (0, trainer.total_steps // 2, trainer.total_steps):
        trainer.step = step
        trainer.set_schedules()
        seen.append([g["weight_decay"] for g in trainer.sets[0].optimizer.param_groups])
    assert seen[0] == [0.04, 0.0]  # biases and norms stay undecayed
    assert math.isclose(seen[1][0], 0.22) and seen[1][1] == 0.0
    assert math.isclose(seen[2][0], 0.4)


def test_an_extra_views_entry_can_be_overridden_by_index():
    cfg = load_config("quick", ["extra_views=[{solarize_p: 0.2}, {n_views: 2, size: 8}]",
                                "extra_views.1.n_views=6", "extra_views.0.solarize_p=0.3"])
    _, second, local = view_configs(cfg)
    assert second.solarize_p == 0.3 and (local.n_views, local.size) == (6, 8)
    assert load_config("quick", ["views.scale.0=0.5"]).views.scale == [0.5, 1.0]  # any list
    with pytest.raises(ConfigError, match="there is no extra_views.0"):
        load_config("quick", ["extra_views.0.n_views=6"])
