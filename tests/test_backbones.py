"""Backbones: shapes, parameter counts against published numbers, per-layer outputs, masking."""

import pytest
import torch
from omegaconf import OmegaConf

from selfsup.backbones import BACKBONES, BackboneConfig, build_backbone, patchify, unpatchify


def _build(name: str, in_channels: int = 3, image_size: int = 32, **kw):
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(name=name, **kw), in_channels, image_size)
    if hasattr(model, "palette"):  # iGPT tokenises with a palette fitted to data: fit it to noise
        model.palette.build(torch.randn(40 * model.palette_size, in_channels), seed=0)
    return model


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_config_is_omegaconf_structured():
    cfg = OmegaConf.structured(BackboneConfig)
    assert cfg.cifar_stem is None and cfg.name == "resnet18"
    cfg.cifar_stem = True
    cfg.width = 0.5
    with pytest.raises(Exception):
        cfg.width = "wide"
    with pytest.raises(Exception):
        cfg.no_such_key = 1
    built = build_backbone(OmegaConf.to_object(cfg), 3, 32)
    assert built.dim == 256


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone.name='resnet7' is not one of"):
        _build("resnet7")


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("in_channels,size,patch_size", [(3, 32, 8), (1, 28, 7)])
def test_every_backbone_forward_backward(name, in_channels, size, patch_size):
    # Default configs; ViTs with large patches (16 tokens) and a 2-block iGPT over 8x8 images
    # (64 tokens) only to keep the test quick.
    kw = dict(depth=2, embed_dim=64) if name.startswith("igpt") else dict(patch_size=patch_size)
    size = 8 if name.startswith("igpt") else size
    model = _build(name, in_channels, size, **kw)
    x = torch.randn(2, in_channels, size, size)
    y = model(x)
    assert y.shape == (2, model.dim)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# Published counts without the classifier: torchvision resnet18 11,689,512 - fc 513,000, with the
# 7x7 stem conv (9,408) swapped for a 3x3 one (1,728); resnet50 25,557,032 - fc 2,049,000;
# timm vit_tiny/small_patch16_224 (5,717,416 / 22,050,664) less the 1000-way head and the learned
# position embeddings of 197 tokens, which are fixed sin-cos buffers here.
@pytest.mark.parametrize(
    "name,kw,size,expected",
    [
        ("resnet18", dict(cifar_stem=True), 32, 11_168_832),
        ("resnet50", dict(), 224, 23_508_032),
        ("vit_tiny", dict(patch_size=16, pool="cls"), 224, 5_717_416 - 193_000 - 197 * 192),
        ("vit_small", dict(patch_size=16, pool="cls"), 224, 22_050_664 - 385_000 - 197 * 384),
    ],
)
def test_parameter_counts_match_published(name, kw, size, expected):
    assert _n_params(_build(name, 3, size, **kw)) == expected


# The rounded figures quoted in papers, for the default (mean-pooled) configs.
@pytest.mark.parametrize(
    "name,kw,millions",
    [
        ("resnet18", dict(), 11.17),
        ("resnet50", dict(), 23.5),
        ("vit_tiny", dict(patch_size=16, image_size=224), 5.5),
        ("vit_small", dict(patch_size=16, image_size=224), 21.7),
        ("igpt_s", dict(), 76.3),  # iGPT-S at 32x32 (1,024 positions), without the output head
    ],
)
def test_parameter_counts_roughly(name, kw, millions):
    assert _n_params(_build(name, **kw)) == pytest.approx(millions * 1e6, rel=0.01)


@pytest.mark.parametrize(
    "name,full,widths", [("resnet18", 512, (0.25, 0.5, 1.5)), ("resnet50", 2048, (0.25, 0.5))]
)
def test_width_scales_dim(name, full, widths):
    for width in widths:
        # The ImageNet stem on 32x32 input keeps this cheap; widths do not depend on the stem.
        model = _build(name, width=width, cifar_stem=False)
        assert model.dim == int(full * width)
        assert model.layer_dims["stem"] == int(64 * width)
        assert model.layer_dims["layer4"] == model.dim
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.dim)


def test_cifar_stem_auto():
    assert _build("resnet18", image_size=32).cifar_stem
    assert _build("resnet18", image_size=64).cifar_stem
    assert not _build("resnet18", image_size=96).cifar_stem
    assert not _build("resnet18", image_size=32, cifar_stem=False).cifar_stem
    assert _build("resnet18", image_size=224, cifar_stem=True).cifar_stem
    # The CIFAR stem keeps 32x32 at full resolution; the ImageNet stem quarters it.
    x = torch.randn(1, 3, 32, 32)
    assert _build("resnet18", cifar_stem=True).stem(x).shape[-1] == 32
    assert _build("resnet18", cifar_stem=False).stem(x).shape[-1] == 8


def test_cifar_stem_stride_halves_every_map_and_needs_the_cifar_stem():
    x = torch.randn(2, 3, 32, 32)
    one, two = _build("resnet18", cifar_stem=True), _build("resnet18", cifar_stem=True, stem_stride=2)
    maps1, maps2 = (m.forward_maps(x, m.layer_names) for m in (one, two))
    for name in one.layer_names:
        assert maps2[name].shape[-1] * 2 == maps1[name].shape[-1]
    assert two(x).shape == one(x).shape  # pooled: the same feature size
    with pytest.raises(ValueError, match="backbone.stem_stride=2"):
        _build("resnet18", image_size=96, stem_stride=2)
    with pytest.raises(ValueError, match="backbone.stem_stride"):
        _build("resnet18", stem_stride=0)


def test_zero_init_residual():
    model = _build("resnet18", zero_init_residual=True)
    assert all(b.bn2.weight.abs().sum() == 0 for b in model.layer1)
    model = _build("resnet50", zero_init_residual=False)
    assert all(b.bn3.weight.min() == 1 for b in model.layer1)


CHEAP = [("resnet18", {}), ("resnet50", dict(width=0.25)), ("vit_tiny", {}), ("dcgan", dict(width=0.5))]


@pytest.mark.parametrize("name,kw", CHEAP)
def test_forward_layers(name, kw):
    model = _build(name, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_layers(x, model.layer_names)
        assert list(feats) == model.layer_names
        for n, f in feats.items():
            assert f.shape == (2, model.layer_dims[n]), n
        if not name.startswith("vit"):
            torch.testing.assert_close(feats[model.layer_names[-1]], model(x))
        # Shallow requests give the same values as a full pass.
        first = model.layer_names[1]
        torch.testing.assert_close(model.forward_layers(x, [first])[first], feats[first])
    with pytest.raises(ValueError, match="unknown"):
        model.forward_layers(x, ["nope"])


@pytest.mark.parametrize("name,kw,size,grids", [
    ("resnet18", dict(width=0.25), 32, [32, 32, 16, 8, 4]),
    ("vit_tiny", dict(patch_size=8, depth=2), 32, [4, 4]),
    ("igpt_s", dict(depth=2, embed_dim=32, num_heads=2, palette_size=64), 8, [8, 8, 8]),
    ("dcgan", dict(width=0.25), 32, [16, 8, 4]),
    ("dcgan", dict(width=0.25), 28, [14, 7, 3]),
])
def test_forward_maps_are_what_forward_layers_pools(name, kw, size, grids):
    """Every backbone's maps lie on its spatial grid, and their means are its layer features."""
    model = _build(name, 3, size, **kw).eval()
    if name == "igpt_s":
        model.palette.build(torch.randn(64 * 20, 3), seed=0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = model.forward_maps(x, model.layer_names)
        pooled = model.forward_layers(x, model.layer_names)
    assert [tuple(m.shape) for m in maps.values()] == [
        (2, model.layer_dims[n], g, g) for n, g in zip(model.layer_names, grids)]
    for n in model.layer_names:
        torch.testing.assert_close(maps[n].mean(dim=(2, 3)), pooled[n])
    with pytest.raises(ValueError, match="unknown"):
        model.forward_maps(x, ["nope"])


def test_forward_layers_stops_at_deepest_requested():
    model = _build("resnet18").eval()
    called = []
    model.layer4.register_forward_hook(lambda *a: called.append(1))
    model.forward_layers(torch.randn(1, 3, 32, 32), ["layer2"])
    assert not called
    vit = _build("vit_tiny").eval()
    vit.blocks[3].register_forward_hook(lambda *a: called.append(1))
    vit.forward_layers(torch.randn(1, 3, 32, 32), ["block2", "block0"])
    assert not called


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_keep_all_equals_full(pool):
    model = _build("vit_tiny", pool=pool).eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.arange(model.num_patches).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, keep), model(x))
        # A shuffled keep is a permutation of the tokens; mean pooling does not care.
        perm = torch.stack([torch.randperm(model.num_patches) for _ in range(2)])
        torch.testing.assert_close(model(x, perm), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_masked_encoding_sees_only_kept_patches(pool):
    model = _build("vit_tiny", pool=pool, patch_size=8).eval()
    p, L, K = 8, model.num_patches, 5
    assert L == 16
    x = torch.randn(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(L)[:K] for _ in range(2)])
    with torch.no_grad():
        tokens = model.forward_tokens(x, keep)
        assert tokens.shape == (2, K + model.num_prefix_tokens, model.embed_dim)
        out = model(x, keep)
        # Scramble every masked patch's pixels: the output must not move.
        patches = patchify(x, p)
        mask = torch.ones(2, L, dtype=torch.bool)
        mask[torch.arange(2)[:, None], keep] = False
        patches[mask] = torch.randn_like(patches[mask])
        x2 = unpatchify(patches, p, 3)
        assert not torch.equal(x, x2)
        torch.testing.assert_close(model(x2, keep), out)
        # ...but changing a kept patch does.
        patches[0, keep[0, 0]] += 1.0
        assert not torch.allclose(model(unpatchify(patches, p, 3), keep)[0], out[0])


def test_vit_masking_reduces_work():
    model = _build("vit_tiny").eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    keep = torch.randperm(64)[:16].expand(2, -1)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32), keep)
    assert seen == [16]


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 32, 24)
    patches = patchify(x, 4)
    assert patches.shape == (2, 8 * 6, 4 * 4 * 3)
    # Patch 1 is the top row, second column, pixels ordered (row, col, channel).
    torch.testing.assert_close(patches[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(patches, 4, 3, grid=(8, 6)), x)
    sq = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(unpatchify(patchify(sq, 7), 7, 1), sq)
    with pytest.raises(ValueError, match="divisible"):
        patchify(sq, 5)


def test_vit_rejects_bad_patch_size_and_handles_other_sizes():
    with pytest.raises(ValueError, match="patch_size"):
        _build("vit_tiny", image_size=28, patch_size=8)
    model = _build("vit_tiny", image_size=32).eval()
    # Position embeddings are a formula, so smaller crops (e.g. DINO's local views) also work.
    assert model(torch.randn(2, 3, 16, 24)).shape == (2, 192)


def test_vit_drop_path_only_in_training():
    model = _build("vit_tiny", drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(a, model(x))


@pytest.mark.parametrize("name,kw", CHEAP)
def test_channels_last_bf16_autocast(name, kw):
    model = _build(name, **kw).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        feats = model.forward_layers(x, model.layer_names[:2])
    assert y.shape == (4, model.dim) and torch.isfinite(y.float()).all()
    assert all(torch.isfinite(f.float()).all() for f in feats.values())
    y.float().square().mean().backward()
    ref = model.eval()(x.contiguous())
    assert torch.allclose(model(x), ref, atol=1e-4, rtol=1e-4)
