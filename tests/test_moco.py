"""MoCo v2 and v3: losses against the formulas written out, the queue and the momentum encoder
after a step, the momentum schedules, ResNet and ViT steps, config checks, the DDP key shuffle."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from thread_ranks import ThreadRanks
from selfsup.backbones import BackboneConfig, VisionTransformer, build_backbone
from selfsup.config import ConfigError, build_config
from selfsup.methods.mocov2 import (MoCoV2, MoCoV2Config, moco_infonce, shuffle_indices,
                                    shuffled_keys)
from selfsup.methods.mocov3 import MoCoV3, MoCoV3Config, mocov3_contrastive
from selfsup.protocol import Progress


# -- losses ----------------------------------------------------------------------------------
def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def reference_infonce(q, k, queue, tau):
    """v1 eq. 1 query by query: -log exp(q.k+/T) / (exp(q.k+/T) + sum_queue exp(q.k-/T))."""
    total, hits = 0.0, 0
    for qi, ki in zip(q.double().tolist(), k.double().tolist()):
        qi, ki = _unit(qi), _unit(ki)
        pos = _dot(qi, ki) / tau
        negs = [_dot(qi, n) / tau for n in queue.double().tolist()]
        total += _logsumexp([pos, *negs]) - pos
        hits += pos > max(negs)
    return total / len(q), hits / len(q)


def test_infonce_matches_reference():
    g = torch.Generator().manual_seed(0)
    for b, d, size, tau in [(4, 8, 16, 0.2), (7, 3, 5, 0.07), (3, 16, 40, 1.0)]:
        q, k = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 3
        queue = F.normalize(torch.randn(size, d, generator=g), dim=1)
        loss, acc = moco_infonce(q, k, queue, tau)
        ref_loss, ref_acc = reference_infonce(q, k, queue, tau)
        assert abs(loss.item() - ref_loss) < 1e-5
        assert abs(acc.item() - ref_acc) < 1e-6
    # Key = query, a queue of 3 opposite vectors: the positive logit beats each negative by 2/T.
    e = F.normalize(torch.randn(1, 8, generator=g), dim=1)
    loss, acc = moco_infonce(e.repeat(5, 1), e.repeat(5, 1), -e.repeat(3, 1), 0.5)
    assert acc.item() == 1.0 and abs(loss.item() - math.log(1 + 3 * math.exp(-2 / 0.5))) < 1e-6


def reference_mocov3(q, k_all, tau, offset):
    """Algorithm 1's ctr, one query at a time: 2T * mean_i (logsumexp_j q_i.k_j/T - q_i.k_{offset+i}/T)."""
    keys = [_unit(k) for k in k_all.double().tolist()]
    total = 0.0
    for i, qi in enumerate(q.double().tolist()):
        qi = _unit(qi)
        logits = [_dot(qi, kj) / tau for kj in keys]
        total += _logsumexp(logits) - logits[offset + i]
    return 2 * tau * total / len(q)


def test_mocov3_contrastive_matches_reference_on_every_rank():
    g = torch.Generator().manual_seed(1)
    for b, w, d, tau in [(4, 1, 8, 1.0), (3, 3, 5, 0.2), (6, 2, 16, 0.5)]:
        q_all = torch.randn(w * b, d, generator=g)
        k_all = torch.randn(w * b, d, generator=g) * 2
        for r in range(w):
            q = q_all[r * b:(r + 1) * b].clone().requires_grad_()
            keys = k_all.clone().requires_grad_()
            loss = mocov3_contrastive(q, keys, tau, offset=r * b)
            assert abs(loss.item() - reference_mocov3(q, k_all, tau, r * b)) < 1e-5
            loss.backward()
            assert q.grad.abs().sum() > 0 and keys.grad is None  # keys are targets only


# -- models ----------------------------------------------------------------------------------
class _TinyBackbone(torch.nn.Module):
    """Conv-BN-ReLU-pool: ResNet-ish, so the key encoder's BN sees its own batch."""

    dim = 6

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1, bias=False),
                                       torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x)


def _views(b=6, seed=1, size=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def _mocov2(**kw):
    torch.manual_seed(0)
    kw = {"proj_hidden": 16, "proj_dim": 8, "queue_size": 32, **kw}
    return MoCoV2(MoCoV2Config(**kw), _TinyBackbone())


def _mocov3(**kw):
    torch.manual_seed(0)
    return MoCoV3(MoCoV3Config(**{"proj_hidden": 16, "proj_dim": 8, **kw}), _TinyBackbone())


def _perturb_teacher(model):
    """The teacher starts as a copy; move it away so that the tests see which network is which."""
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _sgd_step(model, loss):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_mocov2_forward_is_infonce_of_query_encoder_against_key_encoder():
    model = _mocov2()
    _perturb_teacher(model)
    x1, x2 = _views()
    loss, metrics, _ = model([x1, x2], Progress(0, 5, 10))
    q = model.projector(model.backbone(x1))
    with torch.no_grad():
        k = model.teacher[1](model.teacher[0](x2))
    ref, ref_acc = reference_infonce(q.detach(), k, model.queue.features, 0.2)
    assert abs(loss.item() - ref) < 1e-5 and abs(metrics["contrast_acc"].item() - ref_acc) < 1e-6
    assert all(m.dim() == 0 and not m.requires_grad for m in metrics.values())
    loss.backward()
    assert model.backbone.net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_mocov2_queue_gets_this_steps_keys_only_in_on_step_end():
    model = _mocov2(queue_size=10)
    _perturb_teacher(model)
    x1, x2 = _views(b=6)
    with torch.no_grad():
        keys = F.normalize(model.teacher(x2), dim=1)  # the key encoder before its momentum step
    before = model.queue.features.clone()
    out = model([x1, x2], Progress(0, 5, 10))
    _sgd_step(model, out.loss)
    assert torch.equal(model.queue.features, before) and model.queue.ptr.item() == 0
    model.on_step_end(Progress(0, 5, 10), out.state)
    assert torch.allclose(model.queue.features[:6], keys, atol=1e-6)
    assert torch.equal(model.queue.features[6:], before[6:]) and model.queue.ptr.item() == 6
    # The next step's 6 keys wrap around the end of the 10-entry queue.
    x3, x4 = _views(b=6, seed=2)
    with torch.no_grad():
        keys2 = F.normalize(model.teacher(x4), dim=1)
    out = model([x3, x4], Progress(1, 5, 10))
    _sgd_step(model, out.loss)
    model.on_step_end(Progress(1, 5, 10), out.state)
    assert torch.allclose(model.queue.features[[6, 7, 8, 9, 0, 1]], keys2, atol=1e-6)
    assert torch.allclose(model.queue.features[2:6], keys[2:6]) and model.queue.ptr.item() == 2


def test_mocov2_symmetric_uses_both_views_and_enqueues_both_keys():
    model = _mocov2(symmetric=True)
    _perturb_teacher(model)
    x1, x2 = _views(b=5)
    loss, _, state = model([x1, x2], Progress(0, 5, 10))
    online = lambda v: model.projector(model.backbone(v)).detach()
    with torch.no_grad():
        k1, k2 = model.teacher(x1), model.teacher(x2)
    queue = model.queue.features
    ref = (reference_infonce(online(x1), k2, queue, 0.2)[0]
           + reference_infonce(online(x2), k1, queue, 0.2)[0]) / 2
    assert abs(loss.item() - ref) < 1e-5
    model.on_step_end(Progress(0, 5, 10), state)
    assert torch.allclose(model.queue.features[:10], F.normalize(torch.cat([k2, k1]), dim=1), atol=1e-6)
    assert model.queue.ptr.item() == 10


@pytest.mark.parametrize("make", [_mocov2, _mocov3])
def test_momentum_encoder_follows_the_ema_rule_after_the_step_only(make):
    model = make(momentum=0.9, momentum_end=0.9)
    _perturb_teacher(model)
    teacher_before = _params(model.teacher)
    loss, _, state = model(_views(), Progress(3, 5, 10))
    _sgd_step(model, loss)
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, _params(model.teacher)))
    student = _params(model.backbone) + _params(model.projector)
    assert not all(torch.equal(a, b) for a, b in zip(student, _params(model.teacher)))
    model.on_step_end(Progress(3, 5, 10), state)
    for t_old, s, t_new in zip(teacher_before, student, _params(model.teacher)):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s, atol=1e-6)
    if isinstance(model, MoCoV3):  # the predictor has no momentum copy
        assert sum(p.numel() for p in model.teacher.parameters()) == \
            sum(p.numel() for m in (model.backbone, model.projector) for p in m.parameters())


def test_momentum_schedules():
    v3 = _mocov3().teacher
    assert v3.momentum(Progress(0, 10, 100)) == 0.99
    assert v3.momentum(Progress(99, 10, 100)) == 1.0  # the last step
    assert abs(v3.momentum(Progress(50, 10, 101)) - 0.995) < 1e-12  # half-way, half-way
    ms = [v3.momentum(Progress(s, 10, 100)) for s in range(100)]
    assert all(a <= b for a, b in zip(ms, ms[1:]))
    # MoCo v2: constant by default, a cosine only when asked.
    v2 = _mocov2().teacher
    assert v2.momentum(Progress(0, 10, 100)) == v2.momentum(Progress(99, 10, 100)) == 0.999
    cos = _mocov2(momentum=0.99, momentum_end=0.999).teacher
    assert cos.momentum(Progress(0, 10, 100)) == 0.99 and cos.momentum(Progress(99, 10, 100)) == 0.999
    # A momentum of 1 freezes the teacher.
    model = _mocov3()
    before = _params(model.teacher)
    loss, metrics, state = model(_views(), Progress(99, 10, 100))
    assert metrics["momentum"] == 1.0
    _sgd_step(model, loss)
    model.on_step_end(Progress(99, 10, 100), state)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model.teacher)))


def test_mocov3_forward_is_the_symmetrised_loss():
    model = _mocov3(temperature=0.2)
    _perturb_teacher(model)
    x1, x2 = _views()
    loss = model([x1, x2], Progress(0, 5, 10)).loss
    online = lambda v: model.predictor(model.projector(model.backbone(v))).detach()
    with torch.no_grad():
        k1, k2 = model.teacher(x1), model.teacher(x2)
    expected = reference_mocov3(online(x1), k2, 0.2, 0) + reference_mocov3(online(x2), k1, 0.2, 0)
    assert abs(loss.item() - expected) < 1e-5
    swapped = model([x2, x1], Progress(0, 5, 10)).loss
    assert abs(loss.item() - swapped.item()) < 1e-5


def test_mocov3_heads_follow_the_official_code():
    model = _mocov3(proj_layers=3, pred_last_bn=True)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 16), (16, 16), (16, 8)]
    last = model.projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine
    assert isinstance(model.predictor[-1], torch.nn.BatchNorm1d)
    assert isinstance(_mocov3(pred_hidden=12).predictor[-1], torch.nn.Linear)  # ResNet default
    assert _mocov3(pred_hidden=12).predictor[0].out_features == 12


def _resnet():
    return build_backbone(BackboneConfig(name="resnet18", width=0.125), in_channels=3, image_size=8)


def _vit():
    return VisionTransformer(in_channels=3, image_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
@pytest.mark.parametrize("backbone", [_resnet, _vit])
def test_step_on_resnet_and_vit(method, backbone):
    torch.manual_seed(0)
    if method == "mocov2":
        model = MoCoV2(MoCoV2Config(proj_hidden=32, proj_dim=16, queue_size=64, symmetric=True), backbone())
    else:
        model = MoCoV3(MoCoV3Config(proj_hidden=32, proj_dim=16, temperature=0.2), backbone())
    x1, x2 = _views(b=8, size=8)
    progress = Progress(0, 2, 4)
    loss, metrics, state = model([x1, x2], progress)
    assert torch.isfinite(loss)
    _sgd_step(model, loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    teacher = _params(model.teacher)
    model.on_step_end(progress, state)
    assert not all(torch.equal(a, b) for a, b in zip(teacher, _params(model.teacher)))
    if method == "mocov2":
        assert model.queue.ptr.item() == 16


def test_mocov3_frozen_patch_projection():
    torch.manual_seed(0)
    model = MoCoV3(MoCoV3Config(proj_hidden=32, proj_dim=16, freeze_patch_embed=True), _vit())
    frozen = _params(model.backbone.patch_embed)
    loss, _, state = model(_views(b=8, size=8), Progress(0, 2, 4))
    _sgd_step(model, loss)
    model.on_step_end(Progress(0, 2, 4), state)
    assert all(torch.equal(a, b) for a, b in zip(frozen, _params(model.backbone.patch_embed)))
    assert all(torch.equal(a, b) for a, b in zip(frozen, _params(model.teacher[0].patch_embed)))
    with pytest.raises(ValueError, match="method.freeze_patch_embed"):
        MoCoV3(MoCoV3Config(freeze_patch_embed=True), _TinyBackbone())


def test_two_views_required():
    for model in (_mocov2(), _mocov3()):
        with pytest.raises(ValueError, match="views.n_views=2"):
            model(_views() * 2, Progress(0, 1, 1))


@pytest.mark.parametrize("override, key", [
    (["method.name=mocov2", "method.queue_size=0"], "method.queue_size"),
    (["method.name=mocov2", "method.temperature=0"], "method.temperature"),
    (["method.name=mocov2", "method.momentum=1.5"], "method.momentum"),
    (["method.name=mocov2", "method.momentum_end=-0.1"], "method.momentum_end"),
    (["method.name=mocov2", "method.proj_dim=0"], "method.proj_dim"),
    (["method.name=mocov3", "method.temperature=-1"], "method.temperature"),
    (["method.name=mocov3", "method.momentum_end=2"], "method.momentum_end"),
    (["method.name=mocov3", "method.proj_layers=0"], "method.proj_layers"),
    (["method.name=mocov3", "method.pred_hidden=0"], "method.pred_hidden"),
    (["method.name=mocov3", "method.queue_size=10"], "queue_size"),  # v3 has no queue
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        build_config(override)


def test_recipes_load():
    from selfsup.config import load_config

    for name in ("quick_cifar10_mocov2", "cifar10_mocov2", "quick_cifar10_mocov3", "cifar10_mocov3"):
        cfg = load_config(name)
        assert cfg.method.name == name.split("_")[-1]


# -- shuffling BN across processes -------------------------------------------------------------
def test_shuffle_is_a_seeded_permutation_and_a_no_op_on_one_process():
    perm, inverse = shuffle_indices(12, seed=5, device=torch.device("cpu"))
    again, _ = shuffle_indices(12, seed=5, device=torch.device("cpu"))
    assert torch.equal(perm, again) and not torch.equal(perm, torch.arange(12))
    assert torch.equal(perm[inverse], torch.arange(12)) and torch.equal(inverse[perm], torch.arange(12))
    model = _mocov2()
    x = _views()[0]
    with torch.no_grad():
        assert torch.equal(shuffled_keys(model.teacher, x, seed=3), model.teacher(x))


def test_shuffled_keys_across_ranks(monkeypatch):
    """Under DDP each key comes back to the rank and row of its own image, computed with the BN
    statistics of the random chunk of the global batch that the permutation sent to some rank."""
    import selfsup.methods.mocov2 as mocov2

    w, b = 3, 4
    ranks = ThreadRanks(w)
    for name in ("gather", "rank", "world_size"):
        monkeypatch.setattr(mocov2, name, getattr(ranks, name))
    x_all = torch.randn(w * b, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    encoder = _TinyBackbone()  # train mode: BN normalises with its own batch's statistics
    encoders = [copy.deepcopy(encoder) for _ in range(w)]  # one per rank, as on real processes

    with torch.no_grad():
        keys = ranks.run(lambda r: shuffled_keys(encoders[r], x_all[r * b:(r + 1) * b], seed=11))
        perm, _ = shuffle_indices(w * b, 11, x_all.device)
        ref = torch.empty(w * b, encoder.dim)
        for q in range(w):  # rank q's BN batch is the images perm[q*B:(q+1)*B]
            chunk = perm[q * b:(q + 1) * b]
            ref[chunk] = encoder(x_all[chunk])
        plain = torch.cat([encoder(x_all[r * b:(r + 1) * b]) for r in range(w)])
    assert torch.allclose(torch.cat(keys), ref, atol=1e-6)
    assert not torch.allclose(torch.cat(keys), plain, atol=1e-3)  # BN did see other images


@pytest.mark.parametrize("shuffle_bn", [True, False])
def test_mocov2_keys_under_ddp_follow_shuffle_bn(monkeypatch, shuffle_bn):
    """On 2 ranks the model's keys are the shuffled ones, or the plain key encoder's when
    method.shuffle_bn=false."""
    import selfsup.methods.mocov2 as mocov2

    ranks = ThreadRanks(2)
    for name in ("gather", "rank", "world_size"):
        monkeypatch.setattr(mocov2, name, getattr(ranks, name))
    model = _mocov2(shuffle_bn=shuffle_bn)
    models = [copy.deepcopy(model) for _ in range(2)]
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    progress = Progress(7, 5, 10)

    def step(r):
        return models[r]([x1[r * 4:(r + 1) * 4], x2[r * 4:(r + 1) * 4]], progress).state["keys"]

    keys = torch.cat(ranks.run(step))
    with torch.no_grad():
        if shuffle_bn:
            perm, _ = shuffle_indices(8, 2 * progress.step, x2.device)  # the seed forward uses
            ref = torch.empty(8, 8)
            for q in range(2):
                ref[perm[q * 4:(q + 1) * 4]] = model.teacher(x2[perm[q * 4:(q + 1) * 4]])
        else:
            ref = torch.cat([model.teacher(x2[:4]), model.teacher(x2[4:])])
    assert torch.allclose(keys, F.normalize(ref, dim=1), atol=1e-6)
