"""Evaluators: feature extraction, weighted k-NN, linear probe. Small data, CPU, a few seconds."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.eval import KNNConfig, LinearConfig, extract_features, knn_accuracy, knn_votes, linear_probe
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.linear import _standardise, train_heads
from selfsup.eval.subsets import stratified_subset


# -- a stand-in backbone following the backbone contract ---------------------------------------
class TinyNet(nn.Module):
    """Conv -> BN -> ReLU -> conv -> pooled; BatchNorm and Dropout make train/eval mode visible."""

    def __init__(self, c: int = 3, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.dim = 2 * width
        self.layer_names = ["block1", "block2"]
        self.layer_dims = {"block1": width, "block2": 2 * width}

    def _maps(self, x):
        h1 = torch.relu(self.bn(self.conv1(x)))  # [B, w, H, W]
        h2 = self.drop(torch.relu(self.conv2(h1)))  # [B, 2w, H/2, W/2]
        return {"block1": h1, "block2": h2}

    def forward(self, x):
        return self._maps(x)["block2"].mean((2, 3))

    def forward_layers(self, x, names):
        maps = self._maps(x)
        return {n: maps[n].mean((2, 3)) for n in names}


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _images(n=10, c=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


def _normalise(images):
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


# -- extract_features ------------------------------------------------------------------------
def test_extract_features_matches_direct_forward_and_restores_mode():
    torch.manual_seed(0)
    net = TinyNet()
    net.train()
    net.conv1.eval()  # a submodule the caller froze on purpose must stay frozen afterwards
    images = _images(n=10)
    f = extract_features(net, images, MEAN, STD, batch_size=4)  # 10 = 4 + 4 + 2
    assert net.training and net.bn.training and net.drop.training and not net.conv1.training
    net.eval()
    with torch.no_grad():
        ref = net(_normalise(images))
    assert f.shape == (10, net.dim) and f.dtype == torch.float32
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)


def test_extract_features_layers_dict_and_bf16():
    torch.manual_seed(0)
    net = TinyNet().eval()
    images = _images(n=7)
    out = extract_features(net, images, MEAN, STD, batch_size=3, layers=["block2", "block1"], progress=True)
    assert list(out) == ["block2", "block1"]
    with torch.no_grad():
        ref = net.forward_layers(_normalise(images), ["block1", "block2"])
    for name in ("block1", "block2"):
        assert out[name].shape == (7, net.layer_dims[name])
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-5)
    cl = extract_features(net.to(memory_format=torch.channels_last), images, MEAN, STD, batch_size=3)
    torch.testing.assert_close(cl, ref["block2"], rtol=1e-5, atol=1e-5)
    f16 = extract_features(net, images, MEAN, STD, precision="bf16")
    assert f16.dtype == torch.float32
    torch.testing.assert_close(f16, net(_normalise(images)).detach(), rtol=0.05, atol=0.05)


def test_extract_features_edge_cases_and_errors():
    net = TinyNet().eval()
    assert extract_features(net, _images(n=0), MEAN, STD).shape == (0, net.dim)
    assert extract_features(net, _images(n=0), MEAN, STD, layers=["block1"])["block1"].shape == (0, 8)
    gray = extract_features(TinyNet(c=1).eval(), _images(n=3, c=1), [0.5], [0.5], batch_size=1)
    assert gray.shape == (3, 16)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(net, _images().float(), MEAN, STD)
    with pytest.raises(ValueError, match="unknown layer"):
        extract_features(net, _images(), MEAN, STD, layers=["nope"])
    with pytest.raises(ValueError, match="mean/std"):
        extract_features(net, _images(), (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="precision"):
        extract_features(net, _images(), MEAN, STD, precision="fp8")


# -- k-NN ------------------------------------------------------------------------------------
def _knn_reference(train_f, train_y, test_f, k, t, c):
    """Explicit loops: cosine similarities, the k nearest, votes exp(s / T), ranked classes."""
    votes, ranked = [], []
    for q in test_f.double():
        sims = []
        for j, x in enumerate(train_f.double()):
            sims.append((float(q @ x / (q.norm() * x.norm())), j))
        sims.sort(key=lambda s: -s[0])
        v = [0.0] * c
        for s, j in sims[:k]:
            v[int(train_y[j])] += math.exp(s / t)
        total = sum(v)
        votes.append([a / total for a in v])
        ranked.append(sorted(range(c), key=lambda cl: (-v[cl], cl)))  # ties: lower class first
    return torch.tensor(votes, dtype=torch.float64), ranked


@pytest.mark.parametrize("k,t,chunk", [(7, 0.1, 4), (1, 0.5, 5), (40, 0.07, 1000), (13, 0.02, 3)])
def test_knn_matches_brute_force(k, t, chunk):
    g = torch.Generator().manual_seed(k)
    c = 6
    train_f, test_f = torch.randn(37, 8, generator=g), torch.randn(23, 8, generator=g)
    train_y, test_y = torch.randint(0, c, (37,), generator=g), torch.randint(0, c, (23,), generator=g)
    ref_votes, ranked = _knn_reference(train_f, train_y, test_f, min(k, 37), t, c)
    votes = knn_votes(train_f, train_y, test_f, k=k, temperature=t, num_classes=c, chunk_size=chunk)
    torch.testing.assert_close(votes.double(), ref_votes, rtol=1e-4, atol=1e-6)
    res = knn_accuracy(train_f, train_y, test_f, test_y, k=k, temperature=t, num_classes=c, chunk_size=chunk)
    top1 = 100 * sum(r[0] == int(y) for r, y in zip(ranked, test_y)) / 23
    top5 = 100 * sum(int(y) in r[:5] for r, y in zip(ranked, test_y)) / 23
    assert res["top1"] == pytest.approx(top1) and res["top5"] == pytest.approx(top5)
    assert res["k"] == min(k, 37) and res["temperature"] == t
    assert "k-NN" in res["protocol"] and "train=37 test=23" in res["protocol"]


def test_knn_ties_go_to_lower_class_and_chunking_is_invisible():
    e = torch.eye(3)
    # Two identical nearest neighbours of classes 3 and 1 give equal votes: class 1 wins.
    train_f = torch.stack([e[0], e[0], -e[0], e[1]])
    train_y = torch.tensor([3, 1, 0, 2])
    hit = knn_accuracy(train_f, train_y, e[:1], torch.tensor([1]), k=2, num_classes=4)
    miss = knn_accuracy(train_f, train_y, e[:1], torch.tensor([3]), k=2, num_classes=4)
    assert hit["top1"] == 100.0 and miss["top1"] == 0.0 and "top5" not in hit
    g = torch.Generator().manual_seed(1)
    tr, te = torch.randn(50, 5, generator=g), torch.randn(31, 5, generator=g)
    ytr, yte = torch.randint(0, 7, (50,), generator=g), torch.randint(0, 7, (31,), generator=g)
    results = [knn_accuracy(tr, ytr, te, yte, k=9, chunk_size=cs) for cs in (1, 7, 31, 4096)]
    assert all(r == results[0] for r in results)


def test_topk_accuracy_tie_rule_and_bad_scores():
    scores = torch.zeros(8, 7)  # every class tied: the ranking is 0, 1, 2, ...
    y = torch.arange(8) % 7
    assert topk_accuracy(scores, y) == {"top1": 100.0 * 2 / 8, "top5": 100.0 * 6 / 8}
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.full((2, 7), float("nan")), y[:2])
    with pytest.raises(ValueError, match=">= 0"):
        knn_accuracy(torch.randn(4, 3), torch.tensor([0, 1, -1, 1]), torch.randn(2, 3), torch.tensor([0, 1]))


def test_knn_clustered_features_and_k_larger_than_train():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 10
    ytr, yte = torch.arange(100) % 5, torch.arange(40) % 5
    tr = centres[ytr] + 0.01 * torch.randn(100, 16, generator=g)
    te = centres[yte] + 0.01 * torch.randn(40, 16, generator=g)
    res = knn_accuracy(tr, ytr, te, yte, k=20, temperature=0.1)
    assert res["top1"] == 100.0 and res["top5"] == 100.0
    big = knn_accuracy(tr[:12], ytr[:12], te, yte, k=500)  # k clipped to the 12 training points
    assert big["k"] == 12 and big == knn_accuracy(tr[:12], ytr[:12], te, yte, k=12)
    assert big["top1"] == 100.0  # weights exp(s / 0.1) let the 2-3 same-class points outvote the rest


def test_knn_small_temperature_stays_finite_and_validates():
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(30, 4, generator=g), torch.randn(9, 4, generator=g)
    ytr = torch.randint(0, 3, (30,), generator=g)
    v = knn_votes(tr, ytr, te, k=10, temperature=0.001)  # exp(1 / 0.001) would overflow unshifted
    assert torch.isfinite(v).all() and torch.allclose(v.sum(1), torch.ones(9))
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(tr, ytr, te, ytr[:9], temperature=0.0)
    with pytest.raises(ValueError, match="same D"):
        knn_accuracy(tr, ytr, te[:, :3], ytr[:9])
    with pytest.raises(ValueError, match="num_classes"):
        knn_accuracy(tr, ytr, te, ytr[:9], num_classes=2)


def test_configs_are_omegaconf_structured():
    from omegaconf import OmegaConf

    knn = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(KNNConfig), {"k": 20}))
    assert knn == KNNConfig(k=20)
    lin = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LinearConfig), {"wd_grid": [0.0, 0.1]}))
    assert lin.wd_grid == [0.0, 0.1] and lin.candidates() == [(0.1, 0.0), (0.1, 0.1)]
    with pytest.raises(ValueError, match="optimizer"):
        LinearConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="eval.knn.k=0"):
        KNNConfig(k=0)


# -- linear probe ----------------------------------------------------------------------------
def _blobs(n, d, c, sep, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * sep
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y, g


FAST = LinearConfig(epochs=20, batch_size=256)


def test_analytic_gradient_matches_autograd():
    """One plain-SGD step (no momentum, no decay) moves the weights by -lr * autograd's gradient."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 4, (64,), generator=g)
    (xs,) = _standardise(x)
    cfg = LinearConfig(epochs=1, batch_size=64, momentum=0.0, wd_grid=[])
    w = train_heads(xs, y, [(0.5, 0.0)], 4, cfg, seed=0)  # one full batch from zero, lr at its peak
    w0 = torch.zeros(4, 7, requires_grad=True)
    F.cross_entropy(xs @ w0.T, y).backward()
    torch.testing.assert_close(w, -0.5 * w0.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adamw", 1e-3)])
def test_linear_probe_separable_blobs(optimizer, lr):
    x, y, _ = _blobs(1500, 32, 5, sep=1.5, seed=0)
    cfg = LinearConfig(epochs=20, batch_size=256, optimizer=optimizer, lr=lr)
    res = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], cfg=cfg)
    assert res["top1"] > 97 and res["top5"] == 100.0 and res["train_top1"] > 97
    assert res["weight_decay"] in cfg.wd_grid and res["lr"] == lr
    assert len(res["search"]) == len(cfg.wd_grid) and "val_top1" in res
    assert "linear probe" in res["protocol"] and "train=1000 test=500" in res["protocol"]


def test_linear_probe_random_labels_near_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 32, generator=g)
    y = torch.randint(0, 10, (3000,), generator=g)
    res = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], cfg=FAST)
    assert abs(res["top1"] - 10) < 4  # 2000 test points: one standard error is 0.7 %


def test_linear_probe_deterministic_and_no_search():
    x, y, _ = _blobs(600, 16, 4, sep=0.5, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # small probes run single-threaded on CPU, then restore the setting
    try:
        a = linear_probe(x[:400], y[:400], x[400:], y[400:], cfg=FAST, seed=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    b = linear_probe(x[:400], y[:400], x[400:], y[400:], cfg=FAST, seed=3)
    assert a == b
    cfg = LinearConfig(epochs=5, batch_size=128, val_fraction=0.0, weight_decay=1e-3)
    res = linear_probe(x[:400], y[:400], x[400:], y[400:], cfg=cfg)
    assert res["weight_decay"] == 1e-3 and "search" not in res and "no hyper-parameter search" in res["protocol"]
    assert "top5" not in res  # only 4 classes


def test_linear_probe_weight_decay_search_prefers_regularisation_when_overfitting():
    """Few examples in many dimensions: the held-out slice should choose a non-zero decay."""
    x, y, _ = _blobs(2200, 256, 4, sep=0.12, seed=2)
    cfg = LinearConfig(epochs=30, batch_size=64, wd_grid=[0.0, 1.0], val_fraction=0.25)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], cfg=cfg)
    by_wd = {s["weight_decay"]: s["val_loss"] for s in res["search"]}
    assert by_wd[1.0] < by_wd[0.0]
    assert res["train_top1"] > res["top1"]


def test_stratified_subset_by_fraction_holds_out_each_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3])
    val, fit = stratified_subset(y, 0, fraction=0.1)
    assert torch.bincount(y[val], minlength=4).tolist() == [5, 3, 2, 0]
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(101))
    assert torch.equal(val, stratified_subset(y, 0, fraction=0.1)[0])
    assert not torch.equal(val, stratified_subset(y, 1, fraction=0.1)[0])


def test_stratified_subset_by_total_keeps_the_class_shares():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    idx, rest = stratified_subset(y, 0, total=10)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(y[idx], minlength=3).tolist() == [5, 3, 2] and len(rest) == 90
    assert torch.equal(idx, stratified_subset(y, 0, total=10)[0])
    assert not torch.equal(idx, stratified_subset(y, 1, total=10)[0])
    odd = stratified_subset(y, 0, total=7)[0]  # 3.5 / 2.1 / 1.4: the largest remainders get the rest
    assert len(odd) == 7 and torch.bincount(y[odd], minlength=3).tolist() == [4, 2, 1]
    assert len(stratified_subset(y, 0, total=500)[0]) == 100


def test_stratified_subset_per_class_and_nesting():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 3)
    four = stratified_subset(y, 5, per_class=4)[0]
    assert torch.bincount(y[four], minlength=3).tolist() == [4, 4, 3]  # class 2 has only 3
    ten = stratified_subset(y, 5, per_class=10)[0]
    assert set(four.tolist()) <= set(ten.tolist())  # same seed: the larger draw holds the smaller
    with pytest.raises(ValueError, match="exactly one"):
        stratified_subset(y, 0, per_class=4, fraction=0.1)


def test_protocols_share_one_feature_extraction_per_split():
    from selfsup.config import EvalConfig
    from selfsup.data import ImageSet
    from selfsup.eval import FeatureCache
    from selfsup.eval.protocols import evaluate

    torch.manual_seed(0)
    net = TinyNet().eval()
    y = torch.arange(40) % 4
    train = ImageSet(_images(n=40), y, [str(c) for c in range(4)])
    test = ImageSet(_images(n=12, seed=1), y[:12], [str(c) for c in range(4)])
    ecfg = EvalConfig(linear=LinearConfig(epochs=2, wd_grid=[]))
    cache = FeatureCache(net, MEAN, STD, batch_size=16)
    res = evaluate(cache, train, test, ecfg, ["knn", "linear"])
    assert set(res) == {"knn", "linear"} and cache.extractions == 2  # train once, test once
    direct = extract_features(net, train.images, MEAN, STD)
    torch.testing.assert_close(cache.features(train.images), direct)
    assert cache.extractions == 2  # read back, not extracted again
    both = cache.layers(test.images, ["block1", "block2"])  # several layers: one more pass
    assert cache.extractions == 3 and both["block1"].shape == (12, 8)
    cache.features(test.images, size=16)  # another resolution is another entry
    assert cache.extractions == 4


@pytest.mark.parametrize("name,kw", [("resnet18", dict(width=0.125)), ("vit_tiny", dict(embed_dim=32, depth=2,
                                                                                       num_heads=2, patch_size=4)),
                                     ("igpt_s", dict(embed_dim=16, depth=2, num_heads=2, palette_size=8))])
def test_every_layer_probe_gives_one_result_per_layer_of_every_backbone(name, kw):
    from selfsup.backbones import BackboneConfig, build_backbone
    from selfsup.config import EvalConfig
    from selfsup.data import ImageSet
    from selfsup.eval import FeatureCache
    from selfsup.eval.protocols import evaluate

    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(name=name, **kw), 3, 8)
    if name == "igpt_s":  # its palette is fitted to data before training: fit it to noise
        net.palette.build(torch.randn(200, 3), seed=0)
    y = torch.arange(40) % 4
    train = ImageSet(_images(n=40), y, [str(c) for c in range(4)])
    test = ImageSet(_images(n=12, seed=1), y[:12], [str(c) for c in range(4)])
    ecfg = EvalConfig(layer="all", linear=LinearConfig(epochs=2, wd_grid=[]))
    cache = FeatureCache(net, MEAN, STD, batch_size=16)
    res = evaluate(cache, train, test, ecfg, ["knn", "linear"])
    assert cache.extractions == 2  # every layer of each split in one pass
    for r in res.values():
        assert [row["layer"] for row in r["layers"]] == list(net.layer_names)
        assert [row["depth"] for row in r["layers"]] == list(range(len(net.layer_names)))
        assert r["top1"] == max(row["top1"] for row in r["layers"]) and "every layer" in r["protocol"]
