"""DINO: the loss against Algorithm 1 written out, the centre, temperatures, multi-crop, head."""

import math

import pytest
import torch
from torch import nn

from conftest import TinyConvNet
from selfsup.backbones.vit import VisionTransformer
from selfsup.config import ConfigError, load_config, view_configs
from selfsup.losses import dino_loss
from selfsup.methods.dino import DINO, DINOConfig
from selfsup.parts.heads import NormalizedLinear
from selfsup.protocol import Progress
from selfsup.views import multicrop


def reference_loss(student, teacher, center, tau_s, tau_t):
    """Algorithm 1 with loops: H(P_t(x_i), P_s(x_v)) over every teacher crop i and student crop
    v != i, each a batch mean of -sum_k p_k log q_k, then averaged over the pairs."""
    s, t, c = student.double(), teacher.double(), center.double().reshape(-1)
    n_views, b, k = s.shape
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(n_views):
            if v == i:
                continue
            pair = 0.0
            for n in range(b):
                p = torch.exp((t[i, n] - c) / tau_t)
                p = p / p.sum()
                log_q = s[v, n] / tau_s - math.log(float(torch.exp(s[v, n] / tau_s).sum()))
                pair += -float((p * log_q).sum())
            total += pair / b
            terms += 1
    return total / terms


def tiny_vit():
    return VisionTransformer(in_channels=3, image_size=8, patch_size=4, embed_dim=16, depth=1,
                             num_heads=2)


def small_cfg(**kw):
    return DINOConfig(**{"proj_hidden": 16, "proj_dim": 8, "out_dim": 32, **kw})


def crops(b=6, n_local=3, g=8, l=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, g, g, generator=gen) for _ in range(2)]
            + [torch.randn(b, 3, l, l, generator=gen) for _ in range(n_local)])


@pytest.mark.parametrize("n_views", [2, 3, 6])
def test_loss_matches_reference(n_views):
    g = torch.Generator().manual_seed(n_views)
    b, k = 5, 11
    student = 3 * torch.randn(n_views, b, k, generator=g)
    teacher = 3 * torch.randn(2, b, k, generator=g)
    center = torch.randn(1, k, generator=g)
    for tau_t in (0.04, 0.07):
        loss, entropy = dino_loss(student, teacher, center, 0.1, tau_t)
        assert abs(loss.item() - reference_loss(student, teacher, center, 0.1, tau_t)) < 1e-4
        # entropy of the centred, sharpened teacher, averaged over crops and images
        p = torch.softmax((teacher.double() - center.double()) / tau_t, -1)
        ref_h = -(p * p.log()).sum(-1).mean().item()
        assert abs(entropy.item() - ref_h) < 1e-5
        assert loss.item() >= entropy.item() - 1e-5  # cross-entropy >= entropy (KL >= 0)


def test_loss_is_zero_kl_when_student_matches_teacher():
    """Student logits equal to the sharpened, centred teacher's on every crop: loss = entropy."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 4, 7, generator=g)
    same = torch.randn(4, 7, generator=g)
    teacher[1] = teacher[0] = same
    center = torch.randn(7, generator=g)
    student = ((same - center) / 0.05 * 0.1).expand(4, 4, 7)  # tau_s / tau_t rescaling
    loss, entropy = dino_loss(student, teacher, center, 0.1, 0.05)
    assert abs(loss.item() - entropy.item()) < 1e-5


def test_centre_updates_only_in_on_step_end():
    torch.manual_seed(0)
    model = DINO(small_cfg(center_momentum=0.8), TinyConvNet())
    model.center.normal_()
    old = model.center.clone()
    views = crops()
    p = Progress(5, 10, 100)
    out = model(views, p)
    assert torch.equal(model.center, old), "forward must not change the centre"
    with torch.no_grad():  # the teacher's outputs of that step, computed independently
        t = model.teacher[1](model.teacher[0](torch.cat(views[:2])))
    model.on_step_end(p, out.state)
    expected = 0.8 * old + 0.2 * t.mean(0, keepdim=True)
    assert torch.allclose(model.center, expected, atol=1e-6)
    assert "center" in model.state_dict()  # checkpointed


def test_teacher_temperature_warms_up_linearly():
    model = DINO(small_cfg(warmup_teacher_temp=0.04, teacher_temp=0.07,
                           warmup_teacher_temp_epochs=30), TinyConvNet())
    at = lambda epoch: model.teacher_temp(Progress(epoch * 10, 10, 10_000))  # noqa: E731
    assert at(0) == pytest.approx(0.04)
    assert at(15) == pytest.approx(0.055)
    assert at(30) == pytest.approx(0.07) and at(100) == pytest.approx(0.07)
    metrics = model(crops(n_local=0), Progress(150, 10, 10_000)).metrics
    assert metrics["teacher_temp"] == pytest.approx(0.055)


@pytest.mark.parametrize("backbone", [TinyConvNet, tiny_vit])
@pytest.mark.parametrize("n_local", [0, 4])
def test_multicrop_shapes_and_teacher_sees_globals_only(backbone, n_local):
    torch.manual_seed(0)
    model = DINO(small_cfg(), backbone())
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(("s", tuple(i[0].shape))))
    model.teacher[0].register_forward_hook(
        lambda m, i, o: calls.append(("t", tuple(i[0].shape))))
    views = crops(b=6, n_local=n_local, g=8, l=4)
    loss, metrics, _ = model(views, Progress(0, 10, 100))
    teacher_in = [s for who, s in calls if who == "t"]
    student_in = [s for who, s in calls if who == "s"]
    assert teacher_in == [(12, 3, 8, 8)]  # the 2 global crops, one batch
    # one backbone pass per resolution: globals together, locals together
    expected = [(12, 3, 8, 8)] + ([(6 * n_local, 3, 4, 4)] if n_local else [])
    assert student_in[-len(expected):] == expected
    assert torch.isfinite(loss) and set(metrics) == {"teacher_entropy", "kl", "teacher_temp"}


@pytest.mark.parametrize("backbone", [TinyConvNet, tiny_vit])
def test_forward_backward_step(backbone):
    torch.manual_seed(0)
    model = DINO(small_cfg(freeze_last_layer=0), backbone())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    t_before = {k: v.clone() for k, v in model.teacher[0].state_dict().items()}
    p = Progress(0, 10, 100)
    loss, _, state = model(crops(n_local=2), p)
    loss.backward()
    model.on_after_backward(p)
    assert all(q.grad is None for q in model.teacher.parameters())
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.backbone.parameters()
               if q.ndim > 1)
    assert model.head.last_layer.weight.grad.abs().sum() > 0
    opt.step()
    model.on_step_end(p, state)
    # the teacher moved towards the student, and only a little (momentum 0.996)
    moved = [k for k, v in model.teacher[0].state_dict().items()
             if v.is_floating_point() and not torch.equal(v, t_before[k])]
    assert moved
    w_s = dict(model.backbone.named_parameters())
    for k, v in model.teacher[0].named_parameters():
        expected = 0.996 * t_before[k] + 0.004 * w_s[k].detach()
        assert torch.allclose(v, expected, atol=1e-6)


def test_last_layer_frozen_in_first_epoch_then_trained():
    torch.manual_seed(0)
    model = DINO(small_cfg(freeze_last_layer=1, norm_last_layer=False), TinyConvNet())
    for step, frozen in [(0, True), (9, True), (10, False), (25, False)]:
        model.zero_grad(set_to_none=True)
        p = Progress(step, 10, 100)
        model(crops(), p).loss.backward()
        model.on_after_backward(p)
        last = list(model.head.last_layer.parameters())
        assert len(last) == 2  # weight and the learnable norm g
        assert all((q.grad is None) == frozen for q in last)
        assert model.head.mlp[0].weight.grad is not None  # the rest trains throughout


def test_weight_normalised_last_layer():
    torch.manual_seed(0)
    layer = NormalizedLinear(8, 20)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]  # g fixed: not a parameter
    with torch.no_grad():
        layer.weight.mul_(torch.rand(20, 1) * 5 + 0.1)  # rows of any length
    w_eff = layer(torch.eye(8)).T  # [20, 8]: the weight the layer applies
    assert torch.allclose(w_eff.norm(dim=1), torch.ones(20), atol=1e-5)
    learned = NormalizedLinear(8, 20, learn_norm=True)
    with torch.no_grad():
        learned.g.fill_(3.0)
    assert torch.allclose(learned(torch.eye(8)).T.norm(dim=1), torch.full((20,), 3.0), atol=1e-5)
    # the head: MLP linears normal(0.02) (truncated at +-2, as DINO's trunc_normal_) with zero bias
    model = DINO(DINOConfig(proj_hidden=512, proj_dim=64, out_dim=16), TinyConvNet())
    lin = model.head.mlp[0]
    assert 0.018 < lin.weight.std() < 0.022 and abs(lin.weight.mean()) < 0.002
    assert torch.equal(lin.bias, torch.zeros_like(lin.bias))


def test_use_bn_head_and_teacher_has_no_optimizer_params():
    model = DINO(small_cfg(use_bn=True, head_layers=3), TinyConvNet())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.head.modules()) == 2
    assert not any(q.requires_grad for q in model.teacher.parameters())


def test_bad_views_and_config_are_refused(tmp_path):
    model = DINO(small_cfg(), TinyConvNet())
    with pytest.raises(ValueError, match="2 global crops"):
        model([torch.randn(4, 3, 8, 8)], Progress(0, 1, 1))
    with pytest.raises(ValueError, match="2 global crops"):
        model([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 4, 4)], Progress(0, 1, 1))
    for bad, key in [("method.out_dim=0", "out_dim"), ("method.teacher_temp=0", "teacher_temp"),
                     ("method.center_momentum=1.5", "center_momentum"),
                     ("method.freeze_last_layer=-1", "freeze_last_layer"),
                     ("method.head_layers=0", "head_layers")]:
        with pytest.raises(ConfigError, match=f"method.{key}"):
            load_config("quick_cifar10_dino", [bad])


@pytest.mark.parametrize("recipe", ["quick_cifar10_dino", "cifar10_dino", "cifar10_dino_vit"])
def test_recipes_give_two_globals_then_locals(recipe):
    cfg = load_config(recipe)
    vc = view_configs(cfg)
    sizes = [v.size for v in vc for _ in range(v.n_views)]
    assert len(sizes) >= 2 and sizes[0] == sizes[1] and all(s <= sizes[0] for s in sizes[2:])
    assert vc[0].solarize_p == 0 and vc[1].solarize_p > 0  # the asymmetric global pair


def test_multicrop_preset():
    vs = multicrop(224, 96, 8)
    assert [(v.n_views, v.size) for v in vs] == [(1, 224), (1, 224), (8, 96)]
    assert [v.blur_p for v in vs] == [1.0, 0.1, 0.5] and [v.solarize_p for v in vs] == [0, 0.2, 0]
    assert vs[0].scale == [0.4, 1.0] and vs[2].scale == [0.05, 0.4]
    small = multicrop(32, 16, 0)
    assert len(small) == 2 and all(v.blur_p == 0 for v in small)
