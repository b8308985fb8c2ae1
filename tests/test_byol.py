"""BYOL: the loss against eq. 2 written out, the target network's EMA and schedule, the heads."""

import math

import pytest
import torch

from conftest import LinearBackbone
from selfsup.config import ConfigError, build_config, load_config, view_configs
from selfsup.methods.byol import BYOL, BYOLConfig, byol_loss
from selfsup.protocol import Progress


def reference_loss(p, z):
    """Eq. 2 of Grill et al. 2020 image by image: ||p/||p|| - z/||z||||^2, in float64 loops."""
    out = []
    for pi, zi in zip(p.detach().double(), z.detach().double()):
        pn = pi / math.sqrt(sum(float(x) ** 2 for x in pi))
        zn = zi / math.sqrt(sum(float(x) ** 2 for x in zi))
        out.append(sum(float(a - b) ** 2 for a, b in zip(pn, zn)))
    return torch.tensor(out, dtype=torch.float64)


def test_loss_matches_normalised_squared_error():
    g = torch.Generator().manual_seed(0)
    for b, d in [(5, 3), (8, 16), (3, 64)]:
        p, z = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 7.0
        loss = byol_loss(p, z)
        assert loss.shape == (b,)
        assert torch.allclose(loss.double(), reference_loss(p, z), atol=1e-5)
    x = torch.randn(4, 8, generator=g)
    assert torch.allclose(byol_loss(x, 3.0 * x), torch.zeros(4), atol=1e-6)  # scale-free
    assert torch.allclose(byol_loss(x, -x), torch.full((4,), 4.0), atol=1e-6)  # opposite: 4


def _model(**kw):
    torch.manual_seed(0)
    return BYOL(BYOLConfig(proj_hidden=16, proj_dim=8, **kw), LinearBackbone())


def _views(b=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 4, 4, generator=g), torch.randn(b, 3, 4, 4, generator=g)]


def _perturb_target(model):
    """The target starts as a copy; move it away so that the tests see which network is which."""
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(0.3 * torch.randn_like(p))


def test_forward_is_the_symmetrised_loss_and_swapping_views_keeps_it():
    model = _model()
    _perturb_target(model)
    v1, v2 = _views()
    prog = Progress(0, 5, 10)
    loss, metrics, _ = model([v1, v2], prog)
    # Eq. 3 by hand: online (backbone, projector, predictor) of one view vs target of the other.
    online = lambda v: model.predictor(model.projector(model.backbone(v)))
    target = lambda v: model.target[1](model.target[0](v))
    expected = reference_loss(online(v1), target(v2)).mean() + reference_loss(online(v2), target(v1)).mean()
    assert abs(loss.item() - expected.item()) < 1e-5
    swapped, _, _ = model([v2, v1], prog)
    assert abs(loss.item() - swapped.item()) < 1e-5
    assert abs(metrics["cos"].item() - (1 - loss.item() / 4)) < 1e-6
    assert set(metrics) == {"cos", "proj_std", "tau"}
    assert all(metrics[k].dim() == 0 and not metrics[k].requires_grad for k in ("cos", "proj_std"))


def test_predictor_only_on_the_online_side():
    model = _model(pred_hidden=12)
    assert model.predictor[0].in_features == 8 and model.predictor[0].out_features == 12
    assert model.predictor[-1].out_features == 8
    target_modules = list(model.target.modules())
    assert not any(m is p for m in target_modules for p in model.predictor.modules())
    # the target's output is the projector's width, and the predictor is no part of it
    assert model.target(_views()[0]).shape == (10, 8)
    assert len(model.target) == 2  # backbone and projector: no predictor
    # pred_hidden defaults to proj_hidden, as in the paper (4096 both)
    assert _model().predictor[0].out_features == 16


def test_no_gradient_reaches_the_target_and_online_gets_one():
    model = _model()
    _perturb_target(model)
    loss, _, _ = model(_views(), Progress(0, 5, 10))
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("target."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_target_moves_only_in_on_step_end_by_the_ema_rule():
    model = _model(tau_base=0.9)
    _perturb_target(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    prog = Progress(3, 5, 10)
    tgt = lambda: {k: v.clone() for k, v in model.state_dict().items() if k.startswith("target.")
                   and "running" not in k and "num_batches" not in k}
    before = tgt()
    loss, _, _ = model(_views(), prog)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, tgt()[k]) for k, v in before.items()), "forward/step moved the target"
    online = {k: v.clone() for k, v in model.state_dict().items()}
    model.on_step_end(prog, {})
    after = tgt()
    tau = 0.9 + (1 - 0.9) * 0.5 * (1 - math.cos(math.pi * 3 / 9))  # step 3 of steps 0..9
    assert model.target.momentum(prog) == pytest.approx(tau)
    for k, v in before.items():
        src = online[k.replace("target.0.", "backbone.").replace("target.1.", "projector.")]
        assert torch.allclose(after[k], tau * v + (1 - tau) * src, atol=1e-6), k
        assert not torch.equal(after[k], v), k


def test_tau_runs_from_tau_base_to_exactly_one():
    total = 51  # steps 0..50: step 25 is half-way
    taus = [_model(tau_base=0.99).target.momentum(Progress(s, 10, total)) for s in (0, 25, 50)]
    assert taus[0] == 0.99 and taus[-1] == 1.0
    assert taus[1] == pytest.approx(0.995)  # half-way on the half cosine
    model = _model(tau_base=0.97)
    _, metrics, _ = model(_views(), Progress(0, 10, total))
    assert metrics["tau"] == pytest.approx(0.97)
    # tau 1 at the last step: on_step_end leaves the target as it is
    _perturb_target(model)
    before = [p.clone() for p in model.target.parameters()]
    model.on_step_end(Progress(total - 1, 10, total), {})
    assert all(torch.equal(a, b) for a, b in zip(before, model.target.parameters()))


def test_a_few_steps_lower_the_loss():
    model = _model(tau_base=0.9)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    v = _views(b=32)
    first = None
    for step in range(30):
        prog = Progress(step, 30, 30)
        loss, _, _ = model(v, prog)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step_end(prog, {})
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < first


def test_needs_exactly_two_views():
    model = _model()
    for n in (1, 3):
        with pytest.raises(ValueError, match="n_views.*extra_views"):
            model(_views()[:1] * n, Progress(0, 1, 1))


@pytest.mark.parametrize("bad", ["method.tau_base=1.5", "method.tau_base=-0.1", "method.proj_dim=0",
                                 "method.pred_hidden=0", "method.proj_hidden=0"])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        build_config(["method.name=byol", bad])


@pytest.mark.parametrize("recipe", ["quick_cifar10_byol", "cifar10_byol"])
def test_recipes_give_the_asymmetric_pair(recipe):
    cfg = load_config(recipe)
    assert cfg.method.name == "byol"
    first, second = view_configs(cfg)
    assert (first.n_views, second.n_views) == (1, 1)
    assert first.solarize_p == 0.0 and second.solarize_p == 0.2  # table 6
    assert first.size == second.size and first.scale == second.scale
