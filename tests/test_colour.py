"""The colour pieces of colorization and the split-brain autoencoder: sRGB <-> Lab against
scikit-image, the in-gamut ab bins, soft encoding, rebalancing, the annealed mean, the colour-input
encoders (greyscale refused, split features, stats saved with the weights). The methods' training
is checked by the registry-wide tests and tests/test_learning.py."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.backbones.colour import ab_input, l_input, lab_to_srgb, srgb_to_lab
from selfsup.config import ConfigError
from selfsup.methods import METHODS
from selfsup.parts.colour_bins import (ab_bins, annealed_mean, empirical_prior, quantise_l,
                                       rebalance_weights, soft_encode)
from selfsup.run import load_encoder
from selfsup.train.checkpoint import save_weights
from selfsup.train.trainer import Trainer

color = pytest.importorskip("skimage.color")


def random_rgb(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float32)
    return torch.cat([corners, torch.rand(n, 3, generator=g)]).T.reshape(1, 3, -1, 1)  # [1, 3, P, 1]


def as_image(x):  # [1, 3, P, 1] -> skimage's [P, 1, 3] float64
    return x[0].permute(1, 2, 0).double().numpy()


def test_srgb_lab_matches_scikit_image_both_ways():
    rgb = random_rgb()
    want = torch.from_numpy(color.rgb2lab(as_image(rgb))).permute(2, 0, 1)[None]
    lab = srgb_to_lab(rgb)
    assert (lab - want).abs().max() < 1e-3
    back = torch.from_numpy(color.lab2rgb(as_image(want))).permute(2, 0, 1)[None]
    assert (lab_to_srgb(want.float()) - back).abs().max() < 1e-3
    assert (lab_to_srgb(lab) - rgb).abs().max() < 1e-3  # a round trip
    assert (l_input(lab).abs() <= 1 + 1e-5).all() and (ab_input(lab).abs() <= 1.01).all()


def test_in_gamut_bins_are_those_srgb_colours_reach():
    bins = ab_bins(10)
    # The reference: every colour of the cube's faces at 256 levels (which reach every ab the
    # cube does), in float64 by scikit-image, rounded to the grid.
    v = np.linspace(0, 1, 256)
    uv = np.stack(np.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2)
    faces = [np.insert(uv, c, value, axis=1) for c in range(3) for value in (0.0, 1.0)]
    ab = color.rgb2lab(np.concatenate(faces)[:, None, :])[:, 0, 1:]
    want = {tuple(p) for p in (np.round(ab / 10) * 10).astype(int)}
    assert {tuple(p) for p in bins.long().tolist()} == want and len(bins) == 261
    assert bins.min(0).values.tolist() == [-90, -110] and bins.max(0).values.tolist() == [100, 90]
    assert [0, 0] in bins.tolist() and [100, 90] not in bins.tolist()  # grey in, no red-yellow corner


def test_soft_encoding_rows_sum_to_one_over_the_nearest_bins():
    bins = ab_bins(10)
    ab = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0)) * 40
    for k in (1, 5, 10):
        enc = soft_encode(ab, bins, k=k, sigma=5.0)  # [B, Q, h, w]
        assert enc.shape == (3, len(bins), 5, 4)
        torch.testing.assert_close(enc.sum(1), torch.ones(3, 5, 4))
        assert ((enc > 0).sum(1) == k).all()
        nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), bins).argmin(1)
        assert torch.equal(enc.argmax(1).flatten(), nearest)  # the nearest bin weighs most


def test_rebalancing_weights_have_expectation_one_under_the_prior():
    bins = ab_bins(10)
    ab = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 15
    prior = empirical_prior(ab, bins, sigma=5.0)
    assert prior.min() >= 0 and abs(float(prior.sum()) - 1) < 1e-5
    full = (prior + 1e-6) / (prior + 1e-6).sum()  # lam 0 inverts the prior itself: no empty bin
    for p, lam in ((full, 0.0), (prior, 0.5), (prior, 1.0)):
        assert abs(float((p * rebalance_weights(p, lam)).sum()) - 1) < 1e-4
    w = rebalance_weights(prior, 0.5)
    common, rare = prior.argmax(), prior.argmin()
    assert w[rare] > w[common]  # rare colours weigh more
    torch.testing.assert_close(rebalance_weights(prior, 1.0), torch.ones_like(prior))  # lam 1: none


def test_annealed_mean_goes_from_the_mean_at_t1_to_the_mode_as_t_falls():
    bins = ab_bins(10)
    logits = torch.randn(2, len(bins), 3, 3, generator=torch.Generator().manual_seed(2)) * 3
    mean = torch.einsum("bqhw,qd->bdhw", logits.softmax(1), bins)
    torch.testing.assert_close(annealed_mean(logits, bins, 1.0), mean)
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(annealed_mean(logits, bins, 1e-4), mode)


def test_l_quantisation_covers_0_to_100():
    L = torch.tensor([0.0, 1.99, 2.0, 50.0, 99.99, 100.0]).view(1, 1, 1, -1)
    assert quantise_l(L, 50).flatten().tolist() == [0, 0, 1, 25, 49, 49]


@pytest.mark.parametrize("method,inp", [("colorization", "L"), ("splitbrain", "split")])
def test_grey_data_and_wrong_inputs_are_refused_naming_the_setting(tmp_path, method, inp):
    with pytest.raises(ValueError, match="backbone.input=.*1 channel.*data.channels=3"):
        build_backbone(BackboneConfig(width=0.125, input=inp), in_channels=1, image_size=16)
    cfg = tiny_config(method, f"trainer.out={tmp_path}", "data.channels=null")  # digits: grey
    with pytest.raises(ConfigError, match=f"backbone.input={inp} needs colour images") as info:
        Trainer(cfg, run_dir=tmp_path / "run")
    assert "\n" not in str(info.value)
    rgb = build_backbone(BackboneConfig(width=0.125), in_channels=3, image_size=16)
    with pytest.raises(ValueError, match=f"method.name={method} needs backbone.input={inp}"):
        METHODS[method](METHODS[method].config_class(), rgb)
    with pytest.raises(ValueError, match="backbone.input=split needs a ResNet"):
        BackboneConfig(name="vit_tiny", input="split")
    with pytest.raises(ValueError, match="backbone.input='lab' is not one of"):
        BackboneConfig(input="lab")


def test_split_encoder_features_are_the_two_halves_concatenated():
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    enc = build_backbone(BackboneConfig(width=0.125, input="split"), 3, 16, mean, std).eval()
    whole = build_backbone(BackboneConfig(width=0.125), 3, 16)
    assert enc.trunk_l.layer_dims["layer4"] == whole.layer_dims["layer4"] // 2  # half width
    assert enc.layer_dims == {n: 2 * d for n, d in enc.trunk_l.layer_dims.items()} and enc.dim == 2 * enc.trunk_l.dim
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    rgb = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    lab = srgb_to_lab(rgb)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), torch.cat([enc.trunk_l(l_input(lab)), enc.trunk_ab(ab_input(lab))], 1))
        maps = enc.forward_maps(x, ["stem", "layer3"])
        for name, m in maps.items():
            own = [enc.trunk_l.forward_maps(l_input(lab), [name])[name],
                   enc.trunk_ab.forward_maps(ab_input(lab), [name])[name]]
            torch.testing.assert_close(m, torch.cat(own, 1))
            assert m.shape[1] == enc.layer_dims[name]
        torch.testing.assert_close(enc.forward_layers(x, ["layer3"])["layer3"], maps["layer3"].mean((2, 3)))


@pytest.mark.parametrize("method", ["colorization", "splitbrain"])
def test_encoder_is_saved_and_loaded_with_its_normalisation(tmp_path, method):
    cfg = tiny_config(method)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    torch.manual_seed(cfg.trainer.seed)
    enc = build_backbone(cfg.backbone, 3, cfg.views.size, mean, std).eval()
    with torch.no_grad():
        for p in enc.parameters():  # "trained" weights, unlike the seed's
            p.add_(0.1)
    path = tmp_path / "encoder.safetensors"
    save_weights(path, enc.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    loaded = load_encoder(path, cfg, in_channels=3).eval()
    assert loaded.mean.tolist() == pytest.approx(mean) and loaded.std.tolist() == pytest.approx(std)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x))
    start = load_encoder(path, cfg, in_channels=3, random_init=True)  # the baseline keeps the stats
    assert start.mean.tolist() == pytest.approx(mean) and start.std.tolist() == pytest.approx(std)
    assert not torch.equal(next(start.parameters()), next(enc.parameters()))
