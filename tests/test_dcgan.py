"""DCGAN (selfsup/methods/dcgan.py) and the pooled multi-layer evaluation `eval.pool`
(selfsup/eval/features.py): the paper's architecture rules and initialisation, the GAN losses
against direct computations, each player's step changing only that player, the generator's
output in the real views' units, fixed-noise pictures, and DCGAN's feature (every layer
max-pooled to g x g and concatenated) against a direct computation from `forward_maps`.
The learning test trains once on real CIFAR-10 and probes both ways."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SHARED_DATA, needs_cifar10, tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.backbones.dcgan import DCGANDiscriminator
from selfsup.config import EvalConfig, build_config, load_config
from selfsup.data import ImageSet
from selfsup.errors import ConfigError
from selfsup.eval import FeatureCache, extract_features
from selfsup.eval.linear import LinearConfig
from selfsup.eval.protocols import evaluate
from selfsup.losses import gan_discriminator_loss, gan_generator_loss
from selfsup.methods.dcgan import DCGAN, DCGANConfig
from selfsup.protocol import Progress
from selfsup.train.step import backward_step
from selfsup.train.trainer import Trainer

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _method(size=32, width=0.25, channels=3, **kw) -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(DCGANConfig(**kw), DCGANDiscriminator(channels, size, width))


def _normalise(images):
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def _images(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_mirrors_the_discriminator_and_follows_the_rules(size):
    model = _method(size)
    z = model.noise(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert z.shape == (5, 100) and -1 <= z.min() and z.max() <= 1  # uniform in [-1, 1]
    assert model.generator(z).shape == (5, 3, size, size)
    gen = list(model.generator.net)
    convs = [m for m in gen if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs[:-1]] == [model.backbone.layer_dims[n] for n in
                                                    reversed(model.backbone.layer_names)]
    assert all(c.bias is None for c in convs)  # batch norm's shift replaces them (dcgan.torch)
    # §3: batch norm and ReLU after every hidden layer; the output layer is tanh, no batch norm.
    assert isinstance(gen[-1], nn.Tanh) and isinstance(gen[-2], nn.ConvTranspose2d)
    for i, m in enumerate(gen[:-2]):
        if isinstance(m, nn.ConvTranspose2d):
            assert isinstance(gen[i + 1], nn.BatchNorm2d) and isinstance(gen[i + 2], nn.ReLU)
    # The discriminator: no batch norm on its input layer, batch norm and LeakyReLU 0.2 after.
    first, *rest = model.backbone.layers
    assert not any(isinstance(m, nn.BatchNorm2d) for m in first)
    assert all(isinstance(layer[1], nn.BatchNorm2d) for layer in rest)
    assert all(layer[2].negative_slope == 0.2 for layer in model.backbone.layers)
    assert model.discriminator.trunk is model.backbone and model.discriminator(
        torch.randn(2, 3, size, size)).shape == (2,)
    wider = DCGAN(DCGANConfig(width=0.5), DCGANDiscriminator(3, size, 0.25))  # method.width: G's own
    assert [c.out_channels for c in wider.generator.net if isinstance(c, nn.ConvTranspose2d)][-2] == 32


def test_initialisation_is_the_papers():
    """§4: weights from N(0, 0.02); batch-norm scales from N(1, 0.02), shifts 0."""
    model = _method(32, width=1.0)
    for part in (model.generator, model.discriminator):
        w = torch.cat([m.weight.flatten() for m in part.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
        g = torch.cat([m.weight for m in part.modules() if isinstance(m, nn.BatchNorm2d)])
        b = torch.cat([m.bias for m in part.modules() if isinstance(m, nn.BatchNorm2d)])
        assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 1e-3
        assert abs(g.mean() - 1) < 3e-3 and abs(g.std() - 0.02) < 3e-3 and not b.any()


def test_gan_losses_match_direct_computations():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, generator=g) * 3, torch.randn(5, 1, generator=g) * 3
    loss, acc = gan_discriminator_loss(real, fake)
    sig = torch.sigmoid
    direct = -torch.log(sig(real)).mean() - torch.log(1 - sig(fake.flatten())).mean()
    torch.testing.assert_close(loss, direct)
    torch.testing.assert_close(acc, ((real > 0).sum() + (fake <= 0).sum()).float() / 12)
    torch.testing.assert_close(gan_generator_loss(fake), -torch.log(sig(fake)).mean())

    # The method's two losses are these, on the discriminator's logits (eval mode: fixed BN).
    model = _method(16).eval()
    real_x = torch.randn(6, 3, 16, 16)
    z = model.noise(6, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        fake_x = model.generate(z)
        d_real, d_fake = model.discriminator(real_x), model.discriminator(fake_x)
        out_d = model.discriminator_loss([real_x, z], Progress(0, 1, 1))
        out_g = model([real_x, z], Progress(0, 1, 1))
    torch.testing.assert_close(out_d.loss, -torch.log(sig(d_real)).mean() - torch.log(1 - sig(d_fake)).mean())
    torch.testing.assert_close(out_g.loss, -torch.log(sig(d_fake)).mean())
    torch.testing.assert_close(out_d.metrics["d_acc_real"], (d_real > 0).float().mean())


def test_generator_output_is_in_the_real_views_units():
    """tanh's -1 and 1 become the normalised black and white of each channel."""
    model = _method(16)
    images = _images(8, 16)
    images[0, :, 0, 0], images[1, :, 0, 0] = 0, 255  # black and white in every channel
    views = _normalise(images)
    model.init_from_data(lambda n: [views[:n]], seed=0)
    low, high = (0 - torch.tensor(MEAN)) / torch.tensor(STD), (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(model.pixel_range, torch.stack([low, high]))
    assert model.init_from_data(lambda n: [views[:n] * 0], seed=0) is None  # fitted once: kept
    with torch.no_grad():  # saturate tanh: the outputs reach exactly the ends of the range
        model.generator.net[-2].weight.mul_(1e4)
        out = model.generate(model.noise(64, torch.Generator().manual_seed(0), torch.device("cpu")))
    torch.testing.assert_close(out.amin(dim=(0, 2, 3)), low)
    torch.testing.assert_close(out.amax(dim=(0, 2, 3)), high)
    pixels = out * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_each_players_step_changes_only_that_player(tmp_path):
    """The discriminator's step moves its weights and running statistics only; the generator's,
    which backpropagates through the discriminator, moves the generator's only."""
    trainer = Trainer(tiny_config("dcgan", f"trainer.out={tmp_path}"), run_dir=tmp_path / "run")
    model = trainer.model.train()
    x, _ = trainer.feed.gather(torch.arange(32))
    views = trainer.make_views(x, aug_seed=3)
    assert [s.name for s in trainer.sets] == ["discriminator", "generator"]
    for s in trainer.sets:  # the method's defaults: Adam (AdamW without decay), beta1 0.5
        assert s.settings.optimizer == "adamw" and s.settings.betas == [0.5, 0.999]
        assert s.settings.weight_decay == 0.0
    is_d = lambda k: k.startswith(("discriminator.", "backbone."))  # noqa: E731
    for s in trainer.sets:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        backward_step(s.loss(views, Progress(0, 1, 1)).loss, s.optimizer, s.params)
        after = model.state_dict()
        changed = [k for k in before if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])]
        assert changed, s.name
        if s.name == "discriminator":
            assert all(is_d(k) for k in changed), changed
            assert "backbone.layers.1.1.running_mean" in changed  # from the real batch
        else:
            assert all(k.startswith("generator.") for k in changed), changed
            assert "generator.net.1.running_mean" in changed
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # restored


def test_pictures_are_the_same_fixed_noise_samples_at_every_call():
    model = _method(16).eval()
    a = model.pictures([torch.randn(8, 3, 16, 16), torch.zeros(8, 100)])["samples"]
    b = model.pictures([torch.randn(8, 3, 16, 16) + 1, torch.ones(8, 100)])["samples"]
    assert len(a) == 8 and all(r.shape == (8, 3, 16, 16) for r in a)
    assert all(torch.equal(r, s) for r, s in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_bad_settings_are_refused_naming_the_key(tmp_path):
    base = ["backbone.name=dcgan", "method.name=dcgan", "views.n_views=1", "views.size=32"]
    for bad, key in (("method.nz=0", "method.nz"), ("method.noise=gauss", "method.noise"),
                     ("method.width=0", "method.width"), ("views.size=24", "views.size"),
                     ("backbone.name=resnet18", "backbone.name=dcgan"), ("views.n_views=2", "views.n_views"),
                     ("eval.pool=0", "eval.pool"), ("eval.layer=conv1 eval.pool=4", "eval.pool")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_config([*base, *bad.split()])
    assert load_config("quick_cifar10_dcgan", ["eval.pool=4"]).eval.pool == 4
    with pytest.raises(ValueError, match="eval.pool"):
        EvalConfig(pool=-1)


@pytest.mark.parametrize("name,kw,size", [("resnet18", dict(width=0.125), 16), ("dcgan", dict(width=0.25), 32),
                                          ("vit_tiny", dict(embed_dim=16, depth=2, num_heads=2, patch_size=4), 16)])
def test_pooled_multi_layer_features_are_every_map_max_pooled(name, kw, size):
    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(name=name, **kw), 3, size).eval()
    images = _images(10, size)
    feats = extract_features(net, images, MEAN, STD, batch_size=4, pool=4)
    assert feats.shape == (10, sum(net.layer_dims[n] * 16 for n in net.layer_names))
    with torch.no_grad():
        maps = net.forward_maps(_normalise(images), net.layer_names)
    direct = torch.cat([F.adaptive_max_pool2d(maps[n], 4).flatten(1) for n in net.layer_names], dim=1)
    torch.testing.assert_close(feats, direct)
    grid2 = extract_features(net, images[:0], MEAN, STD, pool=2)  # no images: sized from layer_dims
    assert grid2.shape == (0, sum(net.layer_dims[n] * 4 for n in net.layer_names))


def test_every_frozen_protocol_reads_the_pooled_feature_from_the_cache():
    torch.manual_seed(0)
    net = DCGANDiscriminator(3, 16, 0.25).eval()
    y = torch.arange(40) % 4
    train = ImageSet(_images(40, 16), y, [str(c) for c in range(4)])
    test = ImageSet(_images(12, 16, seed=1), y[:12], [str(c) for c in range(4)])
    ecfg = EvalConfig(pool=4, linear=LinearConfig(epochs=2, wd_grid=[]))
    cache = FeatureCache(net, MEAN, STD, batch_size=16)
    res = evaluate(cache, train, test, ecfg, ["knn", "linear"])
    assert cache.extractions == 2  # each split once, shared by both protocols
    assert all("max-pooled to 4x4" in r["protocol"] and "conv1, conv2" in r["protocol"] for r in res.values())
    assert f"dim={(16 + 32) * 16}" in res["linear"]["protocol"]
    cache.features(train.images)  # the pooled output is another entry
    assert cache.extractions == 3
    with pytest.raises(ValueError, match="eval.pool"):
        evaluate(cache, train, test, dataclasses.replace(ecfg, layer="conv1"), ["knn"])


# The learning test's changes to the learning tests' budget (tests/learning_cases.py BUDGET): lr
# 2e-3 for both players (the recipe's 2e-4 barely moves the discriminator in 124 steps), no warm-up,
# 30 probe epochs, 5,000 seeded test images. Gains over the random-init network, linear top-1,
# measured on the 2-core CPU in fp32 (pooled output / eval.pool=4): seed 0 +1.76 / +3.52, seed 1
# +0.60 / +3.10; the margins are about half the smaller gains.
DCGAN_CASE = ["trainer.warmup_epochs=0", "eval.linear.epochs=30", "trainer.param_sets.discriminator.lr=2e-3",
              "trainer.param_sets.generator.lr=2e-3"]
MARGINS = {None: 0.3, 4: 1.5}  # eval.pool -> linear-probe margin in points of top-1


@pytest.mark.slow
@needs_cifar10
def test_dcgan_beats_random_init_on_cifar10_under_both_protocols(tmp_path):
    """One training run, probed twice: on the pooled output (ours) and on every layer max-pooled
    to 4x4 (the paper's, eval.pool=4), each against the same network at its random init."""
    from learning_cases import BUDGET

    cfg = load_config("quick_cifar10_dcgan", [f"data.root={SHARED_DATA}", *BUDGET, *DCGAN_CASE,
                                              f"trainer.out={tmp_path}"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    test = trainer.test_set
    test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:5000])

    def probe() -> dict:
        cache = FeatureCache(trainer.model.backbone, trainer.mean, trainer.std, device=trainer.device)
        return {pool: evaluate(cache, trainer.train_set, test, dataclasses.replace(cfg.eval, pool=pool),
                               ["linear"], size=cfg.eval.size)["linear"]["top1"] for pool in MARGINS}

    before = probe()
    trainer.fit()
    after = probe()
    for pool, margin in MARGINS.items():
        print(f"dcgan linear top-1 (eval.pool={pool}): random init {before[pool]:.2f} %, "
              f"trained {after[pool]:.2f} %")
        assert after[pool] > before[pool] + margin, pool
