"""Barlow Twins, VICReg and SimSiam: each loss against the formula written out another way (loops,
numpy), the invariances that define it, SimSiam's stop-gradient, the heads of the official code,
and the cross-process reductions (Barlow's summed cross-correlation, VICReg's gathered batch)."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import LinearBackbone
from thread_ranks import ThreadRanks
from selfsup.config import ConfigError, build_config, load_config, view_configs
from selfsup.methods import barlow_twins
from selfsup.methods.barlow_twins import (BarlowTwins, BarlowTwinsConfig, barlow_twins_loss,
                                          cross_correlation)
from selfsup.methods.simsiam import SimSiam, SimSiamConfig, negative_cosine
from selfsup.methods.vicreg import (VICReg, VICRegConfig, covariance_loss, invariance_loss,
                                    variance_loss, vicreg_loss)
from selfsup.protocol import Progress

PROGRESS = Progress(0, 5, 10)


def _views(b=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 4, 4, generator=g), torch.randn(b, 3, 4, 4, generator=g)]


def _hadamard(n):
    """Sylvester's n x n Hadamard matrix (n a power of 2): entries +-1, orthogonal columns."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _standardised_decorrelated(n=8):
    """[n, n-1] embeddings: the Hadamard columns but the constant one; every column has mean 0
    and (biased) variance 1, and the columns are orthogonal."""
    return torch.tensor(_hadamard(n)[:, 1:], dtype=torch.float32)


# -- Barlow Twins ------------------------------------------------------------------------------
def reference_barlow(h1, h2, lambd, eps=1e-5):
    """Eqs. 1-2 of Zbontar et al. 2021 in float64 loops, from embeddings before the normalisation:
    each view standardised over the batch as BatchNorm does (biased variance, eps 1e-5), then
    C_ij = sum_b a_bi b_bj / N and sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""
    h1, h2 = h1.detach().double().numpy(), h2.detach().double().numpy()
    a = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + eps)
    b = (h2 - h2.mean(0)) / np.sqrt(h2.var(0) + eps)
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1.0 - cij) ** 2 if i == j else lambd * cij ** 2
    return total


def test_barlow_loss_matches_the_sum_over_entries():
    g = torch.Generator().manual_seed(0)
    for d, lambd in [(3, 0.0051), (8, 0.5), (5, 0.0)]:
        c = torch.randn(d, d, generator=g)
        loss, on, off = barlow_twins_loss(c, lambd)
        rows = c.double().tolist()
        ref_on = sum((1 - rows[i][i]) ** 2 for i in range(d))
        ref_off = sum(rows[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
        assert on.item() == pytest.approx(ref_on, rel=1e-5)
        assert off.item() == pytest.approx(ref_off, rel=1e-5)
        assert loss.item() == pytest.approx(ref_on + lambd * ref_off, rel=1e-5)


def test_barlow_forward_is_eq1_on_standardised_projections():
    torch.manual_seed(0)
    model = BarlowTwins(BarlowTwinsConfig(proj_hidden=12, proj_dim=5, lambd=0.3, scale_loss=0.1),
                        LinearBackbone())
    v1, v2 = _views()
    loss, metrics, _ = model([v1, v2], PROGRESS)
    before_bn = model.projector[:-1]  # the projector up to its last, affine-free BN
    h1, h2 = before_bn(model.backbone(v1)), before_bn(model.backbone(v2))
    assert loss.item() == pytest.approx(0.1 * reference_barlow(h1, h2, 0.3), rel=1e-4)
    assert set(metrics) == {"on_diag", "off_diag"}
    assert all(m.dim() == 0 and not m.requires_grad for m in metrics.values())
    swapped, _, _ = model([v2, v1], PROGRESS)  # C becomes its transpose
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-5)


def test_barlow_loss_is_zero_at_identical_decorrelated_standardised_embeddings():
    z = _standardised_decorrelated(8)  # [8, 7]
    c = cross_correlation(z, z, 8)
    assert torch.allclose(c, torch.eye(7), atol=1e-6)
    loss, on, off = barlow_twins_loss(c, 0.0051)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    # Either departure costs: views that disagree (the diagonal), or redundant dimensions.
    flipped = z.clone()
    flipped[:, 0] *= -1
    assert barlow_twins_loss(cross_correlation(z, flipped, 8), 0.0051)[1].item() == pytest.approx(4.0)
    redundant = z.clone()
    redundant[:, 1] = z[:, 0]
    _, on, off = barlow_twins_loss(cross_correlation(redundant, redundant, 8), 0.0051)
    assert on.item() == pytest.approx(0.0, abs=1e-6) and off.item() == pytest.approx(2.0)


def test_barlow_loss_ignores_the_order_of_views_and_of_dimensions():
    g = torch.Generator().manual_seed(2)
    c = torch.randn(6, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    loss = barlow_twins_loss(c, 0.2)[0]
    assert barlow_twins_loss(c.T, 0.2)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert barlow_twins_loss(c[perm][:, perm], 0.2)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_barlow_shares_of_two_ranks_sum_to_the_whole_batch_matrix():
    g = torch.Generator().manual_seed(3)
    w, b, d = 2, 6, 5
    z1, z2 = torch.randn(w * b, d, generator=g), torch.randn(w * b, d, generator=g)
    shares = [cross_correlation(z1[r * b:(r + 1) * b], z2[r * b:(r + 1) * b], w * b) for r in range(w)]
    assert torch.allclose(sum(shares), cross_correlation(z1, z2, w * b), atol=1e-6)
    # the matrix itself, entry by entry
    ref = [[sum(float(z1[k, i] * z2[k, j]) for k in range(w * b)) / (w * b) for j in range(d)]
           for i in range(d)]
    assert torch.allclose(cross_correlation(z1, z2, w * b), torch.tensor(ref), atol=1e-5)


def test_barlow_sum_over_ranks_gives_every_rank_the_global_loss_and_gradient(monkeypatch):
    """Two ranks, each with half the batch: after the all-reduce every rank holds the global loss,
    and a rank's gradient, averaged by DDP over the W ranks (/ W), is its rows' share of the
    one-process gradient of the whole batch."""
    w, b, d, lambd = 2, 5, 4, 0.3
    ranks = ThreadRanks(w)
    monkeypatch.setattr(barlow_twins, "is_distributed", lambda: True)
    monkeypatch.setattr(barlow_twins, "dist", SimpleNamespace(all_reduce=ranks.all_reduce))
    g = torch.Generator().manual_seed(4)
    z1_all, z2_all = torch.randn(w * b, d, generator=g), torch.randn(w * b, d, generator=g)

    def step(r):
        z1 = z1_all[r * b:(r + 1) * b].clone().requires_grad_()
        z2 = z2_all[r * b:(r + 1) * b].clone().requires_grad_()
        c = barlow_twins.sum_over_ranks(cross_correlation(z1, z2, w * b))
        loss = barlow_twins_loss(c, lambd)[0]
        loss.backward()
        return loss.detach(), z1.grad, z2.grad

    results = ranks.run(step)
    ref1, ref2 = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    ref = barlow_twins_loss(cross_correlation(ref1, ref2, w * b), lambd)[0]
    ref.backward()
    for r, (loss, g1, g2) in enumerate(results):
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(g1 / w, ref1.grad[r * b:(r + 1) * b], atol=1e-6)
        assert torch.allclose(g2 / w, ref2.grad[r * b:(r + 1) * b], atol=1e-6)
    # one process: the sum is the matrix itself
    monkeypatch.setattr(barlow_twins, "is_distributed", lambda: False)
    x = torch.randn(3, 3)
    assert barlow_twins.sum_over_ranks(x) is x


def test_barlow_projector_follows_the_official_code():
    model = BarlowTwins(BarlowTwinsConfig(proj_hidden=12, proj_dim=5), LinearBackbone())
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    last = model.projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine


# -- VICReg ------------------------------------------------------------------------------------
def reference_vicreg(z1, z2, sim, std, cov, gamma=1.0, eps=1e-4):
    """The official main_vicreg.py loss in numpy float64, terms written out: (unweighted
    invariance, variance, covariance, weighted total)."""
    a, b = z1.detach().double().numpy(), z2.detach().double().numpy()
    n, d = a.shape
    inv = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v(x):
        return sum(max(0.0, gamma - math.sqrt(np.var(x[:, j], ddof=1) + eps)) for j in range(d)) / d

    def c(x):
        m = np.cov(x, rowvar=False)  # divides by N - 1
        return sum(m[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    var, cv = (v(a) + v(b)) / 2, c(a) + c(b)
    return inv, var, cv, sim * inv + std * var + cov * cv


def test_vicreg_loss_matches_the_official_formula():
    g = torch.Generator().manual_seed(0)
    for n, d, coeffs in [(8, 4, (25.0, 25.0, 1.0)), (5, 7, (1.0, 2.0, 3.0)), (16, 3, (25.0, 25.0, 1.0))]:
        z1 = torch.randn(n, d, generator=g) * 0.7 + 2.0
        z2 = z1 + 0.5 * torch.randn(n, d, generator=g)
        loss, terms = vicreg_loss(z1, z2, z1, z2, *coeffs)
        inv, var, cov, total = reference_vicreg(z1, z2, *coeffs)
        assert terms["inv"].item() == pytest.approx(inv, rel=1e-5)
        assert terms["var"].item() == pytest.approx(var, rel=1e-5, abs=1e-7)
        assert terms["cov"].item() == pytest.approx(cov, rel=1e-5)
        assert loss.item() == pytest.approx(total, rel=1e-5)


def test_vicreg_variance_hinge():
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(64, 5, generator=g)
    wide = 3.0 * (wide - wide.mean(0)) / wide.std(0)  # every std exactly 3 > gamma
    assert variance_loss(wide).item() == 0.0
    collapsed = torch.full((64, 5), 0.3)  # one point: std sqrt(eps)
    assert variance_loss(collapsed).item() == pytest.approx(1.0 - math.sqrt(1e-4), rel=1e-6)
    assert variance_loss(collapsed, std_target=2.0, eps=0.01).item() == pytest.approx(1.9, rel=1e-6)
    # below the target the hinge pushes the std up: a gradient that widens the spread
    narrow = (0.5 * torch.randn(64, 5, generator=g)).requires_grad_()
    variance_loss(narrow).backward()
    centred = narrow.detach() - narrow.detach().mean(0)
    assert (narrow.grad * centred).sum() < 0


def test_vicreg_covariance_is_zero_for_decorrelated_and_shift_free():
    z = _standardised_decorrelated(8)
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-12)
    assert covariance_loss(z + 5.0).item() == pytest.approx(0.0, abs=1e-10)
    x = torch.randn(32, 1, generator=torch.Generator().manual_seed(2))
    twice = torch.cat([x, x], dim=1)  # two copies: C_01 = C_10 = Var(x), divided by D = 2
    assert covariance_loss(twice).item() == pytest.approx(float(x.var()) ** 2, rel=1e-5)
    assert invariance_loss(x, x).item() == 0.0


def test_vicreg_forward_is_the_loss_of_its_expander_outputs():
    torch.manual_seed(0)
    model = VICReg(VICRegConfig(proj_hidden=12, proj_dim=5), LinearBackbone())
    v1, v2 = _views()
    loss, metrics, _ = model([v1, v2], PROGRESS)
    with torch.no_grad():
        z1, z2 = (model.projector(model.backbone(v)) for v in (v1, v2))
    *_, total = reference_vicreg(z1, z2, 25.0, 25.0, 1.0)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert set(metrics) == {"inv", "var", "cov"}
    assert all(m.dim() == 0 and not m.requires_grad for m in metrics.values())
    last = model.projector[-1]
    assert isinstance(last, torch.nn.Linear) and last.bias is None and last.out_features == 5


def test_vicreg_over_two_ranks_is_the_loss_of_the_whole_batch():
    """Rank r's loss: the invariance of its own rows, variance and covariance of the gathered
    global batch (gradients flow back to every rank's rows, as gather_with_grad's backward sums
    them). DDP then averages over ranks: the mean of the ranks' losses must be the one-process
    loss of the whole batch, in value and in gradient."""
    g = torch.Generator().manual_seed(5)
    w, b, d = 2, 6, 4
    z1_all, z2_all = torch.randn(w * b, d, generator=g), torch.randn(w * b, d, generator=g)
    a, c = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    per_rank = [vicreg_loss(a[r * b:(r + 1) * b], c[r * b:(r + 1) * b], a, c)[0] for r in range(w)]
    mean = torch.stack(per_rank).mean()
    mean.backward()
    ref_a, ref_c = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    ref = vicreg_loss(ref_a, ref_c, ref_a, ref_c)[0]
    ref.backward()
    assert mean.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(a.grad, ref_a.grad, atol=1e-6) and torch.allclose(c.grad, ref_c.grad, atol=1e-6)
    # ... which a loss on each rank's rows alone is not (the variance of 6 rows is not of 12)
    local = torch.stack([vicreg_loss(z1_all[r * b:(r + 1) * b], z2_all[r * b:(r + 1) * b],
                                     z1_all[r * b:(r + 1) * b], z2_all[r * b:(r + 1) * b])[0]
                         for r in range(w)]).mean()
    assert abs(local.item() - ref.item()) > 1e-3


# -- SimSiam -----------------------------------------------------------------------------------
def reference_negative_cosine(p, z):
    """-p/|p| . z/|z| image by image, in float64 loops (eq. 1 of Chen & He 2021)."""
    out = []
    for pi, zi in zip(p.detach().double().tolist(), z.detach().double().tolist()):
        dot = sum(x * y for x, y in zip(pi, zi))
        out.append(-dot / math.sqrt(sum(x * x for x in pi)) / math.sqrt(sum(y * y for y in zi)))
    return torch.tensor(out, dtype=torch.float64)


def _simsiam(**kw):
    torch.manual_seed(0)
    return SimSiam(SimSiamConfig(**{"proj_hidden": 12, "proj_dim": 8, "pred_hidden": 3, **kw}),
                   LinearBackbone())


def test_negative_cosine_matches_reference_and_stops_the_targets_gradient():
    g = torch.Generator().manual_seed(0)
    for b, d in [(5, 3), (8, 16)]:
        p = torch.randn(b, d, generator=g).requires_grad_()
        z = (torch.randn(b, d, generator=g) * 4.0).requires_grad_()
        out = negative_cosine(p, z)
        assert out.shape == (b,)
        assert torch.allclose(out.double(), reference_negative_cosine(p, z), atol=1e-6)
        out.sum().backward()
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert z.grad is None, "the target branch must get no gradient"
    x = torch.randn(4, 6, generator=g)
    assert torch.allclose(negative_cosine(x, 2.5 * x), torch.full((4,), -1.0), atol=1e-6)
    assert torch.allclose(negative_cosine(x, -x), torch.full((4,), 1.0), atol=1e-6)


def test_simsiam_forward_is_the_symmetrised_loss():
    model = _simsiam()
    v1, v2 = _views()
    loss, metrics, _ = model([v1, v2], PROGRESS)
    z1, z2 = (model.projector(model.backbone(v)) for v in (v1, v2))
    p1, p2 = model.predictor(z1), model.predictor(z2)
    expected = 0.5 * reference_negative_cosine(p1, z2).mean() + 0.5 * reference_negative_cosine(p2, z1).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    swapped, _, _ = model([v2, v1], PROGRESS)
    assert swapped.item() == pytest.approx(loss.item(), abs=1e-6)
    assert metrics["cos"].item() == pytest.approx(-loss.item(), abs=1e-6)
    assert set(metrics) == {"cos", "proj_std"}
    assert all(m.dim() == 0 and not m.requires_grad for m in metrics.values())


def test_simsiam_gradient_is_that_of_a_frozen_target_branch():
    """Stop-gradient (Algorithm 1): the model's gradient equals the one computed with the targets
    z taken from a frozen copy of the encoder; without the stop it would differ."""
    model = _simsiam()
    frozen = copy.deepcopy(model)
    v1, v2 = _views()
    loss, _, _ = model([v1, v2], PROGRESS)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    def reference(stop):
        ref = copy.deepcopy(frozen)
        z = [ref.projector(ref.backbone(v)) for v in (v1, v2)]
        with torch.no_grad():
            target = [frozen.projector(frozen.backbone(v)) for v in (v1, v2)]
        t = target if stop else z
        cos = torch.nn.functional.cosine_similarity
        out = -0.5 * (cos(ref.predictor(z[0]), t[1]).mean() + cos(ref.predictor(z[1]), t[0]).mean())
        out.backward()
        return {n: p.grad for n, p in ref.named_parameters()}

    stopped, through = reference(stop=True), reference(stop=False)
    for name, grad in got.items():
        assert torch.allclose(grad, stopped[name], atol=1e-6), name
    assert any(not torch.allclose(got[n], through[n], atol=1e-6) for n in got if n.startswith("backbone"))


def test_simsiam_heads_follow_the_official_code():
    model = _simsiam()
    proj = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in proj] == [(6, 12), (12, 12), (12, 8)]
    assert all(m.bias is None for m in proj)
    assert isinstance(model.projector[-1], torch.nn.BatchNorm1d) and not model.projector[-1].affine
    pred = [m for m in model.predictor if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in pred] == [(8, 3), (3, 8)]  # a bottleneck
    assert pred[0].bias is None and pred[1].bias is not None  # no BN after the output linear
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.predictor[2:])
    # no momentum encoder: every parameter is trained, the only buffers are BN statistics
    assert all(p.requires_grad for p in model.parameters())
    assert all("running" in n or "num_batches" in n for n, _ in model.named_buffers())


# -- all three ---------------------------------------------------------------------------------
def test_the_matrices_stay_float32_under_autocast():
    """bf16 would round C's diagonal, whose distance to 1 is what Barlow Twins learns."""
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, cov = cross_correlation(z1, z2, 16), covariance_loss(z1)
    assert c.dtype == torch.float32 and torch.allclose(c, cross_correlation(z1, z2, 16), atol=1e-6)
    assert cov.item() == pytest.approx(covariance_loss(z1).item(), rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda: BarlowTwins(BarlowTwinsConfig(proj_hidden=8, proj_dim=4), LinearBackbone()),
    lambda: VICReg(VICRegConfig(proj_hidden=8, proj_dim=4), LinearBackbone()),
    lambda: _simsiam(),
], ids=["barlow_twins", "vicreg", "simsiam"])
def test_two_views_required(make):
    with pytest.raises(ValueError, match="views.n_views=2"):
        make()(_views() * 2, PROGRESS)


@pytest.mark.parametrize("override, key", [
    (["method.name=barlow_twins", "method.lambd=-0.1"], "method.lambd"),
    (["method.name=barlow_twins", "method.scale_loss=0"], "method.scale_loss"),
    (["method.name=barlow_twins", "method.proj_layers=0"], "method.proj_layers"),
    (["method.name=vicreg", "method.std_coeff=-1"], "method.std_coeff"),
    (["method.name=vicreg", "method.eps=0"], "method.eps"),
    (["method.name=vicreg", "method.proj_dim=0"], "method.proj_dim"),
    (["method.name=simsiam", "method.pred_hidden=0"], "method.pred_hidden"),
    (["method.name=simsiam", "method.proj_hidden=0"], "method.proj_hidden"),
    (["method.name=simsiam", "method.momentum=0.99"], "momentum"),  # no momentum encoder
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        build_config(override)


@pytest.mark.parametrize("method", ["barlow_twins", "vicreg", "simsiam"])
def test_recipes_load(method):
    for recipe in (f"quick_cifar10_{method}", f"cifar10_{method}"):
        cfg = load_config(recipe)
        assert cfg.method.name == method and cfg.data.name == "cifar10"
        assert sum(v.n_views for v in view_configs(cfg)) == 2, recipe
