"""`selfsup export` (selfsup/export.py). The timm file holds exactly timm's tensors: the names and
shapes below were printed from timm 1.0.31's `timm.create_model(name, num_classes=0).state_dict()`.
It computes our encoder's features when run the way timm's modules run (written out below from
timm's source) over weights and BatchNorm statistics drawn at random so that a tensor
wired to the wrong place changes the output, and loads strictly into timm itself where timm is
installed. The ONNX graph gives PyTorch's features at any batch size. Bad requests are refused
with one line that names the setting or the file."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import selfsup
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.config import load_config, to_yaml
from selfsup.errors import SelfsupError
from selfsup.export import ExportError, export, to_timm
from selfsup.runfolder import RunFolder
from selfsup.train.checkpoint import save_weights

# --- timm's tensors, as timm lists them -----------------------------------------------------------
# "name shape", shape "-" for a scalar.
RESNET18 = """
conv1.weight 64,3,7,7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked -
layer1.0.conv1.weight 64,64,3,3
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked -
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked -
layer1.1.conv1.weight 64,64,3,3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked -
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked -
layer2.0.conv1.weight 128,64,3,3
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked -
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked -
layer2.0.downsample.0.weight 128,64,1,1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.0.downsample.1.running_mean 128
layer2.0.downsample.1.running_var 128
layer2.0.downsample.1.num_batches_tracked -
layer2.1.conv1.weight 128,128,3,3
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked -
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked -
layer3.0.conv1.weight 256,128,3,3
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked -
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked -
layer3.0.downsample.0.weight 256,128,1,1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.0.downsample.1.running_mean 256
layer3.0.downsample.1.running_var 256
layer3.0.downsample.1.num_batches_tracked -
layer3.1.conv1.weight 256,256,3,3
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked -
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked -
layer4.0.conv1.weight 512,256,3,3
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked -
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked -
layer4.0.downsample.0.weight 512,256,1,1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.0.downsample.1.running_mean 512
layer4.0.downsample.1.running_var 512
layer4.0.downsample.1.num_batches_tracked -
layer4.1.conv1.weight 512,512,3,3
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked -
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked -
"""

RESNET50 = """
conv1 64,3,7,7
bn1 64
layer1.0.conv1 64,64,1,1
layer1.0.bn1 64
layer1.0.conv2 64,64,3,3
layer1.0.bn2 64
layer1.0.conv3 256,64,1,1
layer1.0.bn3 256
layer1.0.downsample.0 256,64,1,1
layer1.0.downsample.1 256
layer1.1.conv1 64,256,1,1
layer1.1.bn1 64
layer1.1.conv2 64,64,3,3
layer1.1.bn2 64
layer1.1.conv3 256,64,1,1
layer1.1.bn3 256
layer1.2.conv1 64,256,1,1
layer1.2.bn1 64
layer1.2.conv2 64,64,3,3
layer1.2.bn2 64
layer1.2.conv3 256,64,1,1
layer1.2.bn3 256
layer2.0.conv1 128,256,1,1
layer2.0.bn1 128
layer2.0.conv2 128,128,3,3
layer2.0.bn2 128
layer2.0.conv3 512,128,1,1
layer2.0.bn3 512
layer2.0.downsample.0 512,256,1,1
layer2.0.downsample.1 512
layer2.1.conv1 128,512,1,1
layer2.1.bn1 128
layer2.1.conv2 128,128,3,3
layer2.1.bn2 128
layer2.1.conv3 512,128,1,1
layer2.1.bn3 512
layer2.2.conv1 128,512,1,1
layer2.2.bn1 128
layer2.2.conv2 128,128,3,3
layer2.2.bn2 128
layer2.2.conv3 512,128,1,1
layer2.2.bn3 512
layer2.3.conv1 128,512,1,1
layer2.3.bn1 128
layer2.3.conv2 128,128,3,3
layer2.3.bn2 128
layer2.3.conv3 512,128,1,1
layer2.3.bn3 512
layer3.0.conv1 256,512,1,1
layer3.0.bn1 256
layer3.0.conv2 256,256,3,3
layer3.0.bn2 256
layer3.0.conv3 1024,256,1,1
layer3.0.bn3 1024
layer3.0.downsample.0 1024,512,1,1
layer3.0.downsample.1 1024
layer3.1.conv1 256,1024,1,1
layer3.1.bn1 256
layer3.1.conv2 256,256,3,3
layer3.1.bn2 256
layer3.1.conv3 1024,256,1,1
layer3.1.bn3 1024
layer3.2.conv1 256,1024,1,1
layer3.2.bn1 256
layer3.2.conv2 256,256,3,3
layer3.2.bn2 256
layer3.2.conv3 1024,256,1,1
layer3.2.bn3 1024
layer3.3.conv1 256,1024,1,1
layer3.3.bn1 256
layer3.3.conv2 256,256,3,3
layer3.3.bn2 256
layer3.3.conv3 1024,256,1,1
layer3.3.bn3 1024
layer3.4.conv1 256,1024,1,1
layer3.4.bn1 256
layer3.4.conv2 256,256,3,3
layer3.4.bn2 256
layer3.4.conv3 1024,256,1,1
layer3.4.bn3 1024
layer3.5.conv1 256,1024,1,1
layer3.5.bn1 256
layer3.5.conv2 256,256,3,3
layer3.5.bn2 256
layer3.5.conv3 1024,256,1,1
layer3.5.bn3 1024
layer4.0.conv1 512,1024,1,1
layer4.0.bn1 512
layer4.0.conv2 512,512,3,3
layer4.0.bn2 512
layer4.0.conv3 2048,512,1,1
layer4.0.bn3 2048
layer4.0.downsample.0 2048,1024,1,1
layer4.0.downsample.1 2048
layer4.1.conv1 512,2048,1,1
layer4.1.bn1 512
layer4.1.conv2 512,512,3,3
layer4.1.bn2 512
layer4.1.conv3 2048,512,1,1
layer4.1.bn3 2048
layer4.2.conv1 512,2048,1,1
layer4.2.bn1 512
layer4.2.conv2 512,512,3,3
layer4.2.bn2 512
layer4.2.conv3 2048,512,1,1
layer4.2.bn3 2048
"""

VIT_TINY_HEAD = """
cls_token 1,1,192
pos_embed 1,197,192
patch_embed.proj.weight 192,3,16,16
patch_embed.proj.bias 192
"""
VIT_TINY_BLOCK = """
blocks.{i}.norm1.weight 192
blocks.{i}.norm1.bias 192
blocks.{i}.attn.qkv.weight 576,192
blocks.{i}.attn.qkv.bias 576
blocks.{i}.attn.proj.weight 192,192
blocks.{i}.attn.proj.bias 192
blocks.{i}.norm2.weight 192
blocks.{i}.norm2.bias 192
blocks.{i}.mlp.fc1.weight 768,192
blocks.{i}.mlp.fc1.bias 768
blocks.{i}.mlp.fc2.weight 192,768
blocks.{i}.mlp.fc2.bias 192
"""
VIT_TINY_TAIL = """
norm.weight 192
norm.bias 192
"""
# RESNET50 is written one module a line: a conv's weight shape, or a BatchNorm's width C, which
# stands for its weight, bias, running_mean and running_var [C] and num_batches_tracked [].
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def listed(text: str) -> dict[str, tuple]:
    out = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        name, shape = line.split()
        out[name] = () if shape == "-" else tuple(int(s) for s in shape.split(","))
    return out


def listed_modules(text: str) -> dict[str, tuple]:
    out = {}
    for name, shape in listed(text).items():
        if len(shape) == 1:
            out.update({f"{name}.{k}": (shape if k != "num_batches_tracked" else ()) for k in BN_KEYS})
        else:
            out[f"{name}.weight"] = shape
    return out


def shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


# --- run folders, without training ---------------------------------------------------------------

def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight and BatchNorm statistic drawn at random (fresh BN statistics are 0 and 1, and
    zero-init-residual gammas 0: a swapped pair of those would go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            draw = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(draw.abs() + 0.5)
            else:
                t.copy_(draw * (t[0].numel() ** -0.5 if t.dim() > 1 else 0.5))


def make_run(root: Path, *overrides: str, channels: int = 3, weights: bool = True) -> Path:
    """A run folder as training leaves it (config.yaml, normalization.json, encoder.safetensors),
    from the quick recipe with `overrides`, random weights instead of training."""
    cfg = load_config("quick", list(overrides))
    run = root / "run"
    run.mkdir(parents=True)
    folder = RunFolder(run)
    folder.config.write_text(to_yaml(cfg))
    folder.write_stats([0.1 * (i + 1) for i in range(channels)], [0.2 + 0.1 * i for i in range(channels)])
    if weights:
        model = build_backbone(cfg.backbone, channels, cfg.views.size)
        randomize(model)
        save_weights(folder.encoder, model.state_dict())
    return run


def read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def one_line_refusal(call, *needles: str) -> str:
    with pytest.raises(ExportError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, SelfsupError) and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


VIT = ["backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2",
       "backbone.patch_size=4"]
# name -> (backbone, channels, size the backbone is built for, size it is exported for): the
# encoders whose timm tensors are run below (in memory: the files are tested on smaller runs).
TIMM_CASES = {
    "resnet18_cifar_stem": (BackboneConfig(name="resnet18", cifar_stem=True), 1, 16, 16),
    "resnet18_cifar_stem_stride2": (BackboneConfig(name="resnet18", cifar_stem=True, stem_stride=2), 3, 32, 32),
    "resnet50": (BackboneConfig(name="resnet50", cifar_stem=False), 3, 32, 32),
    "vit_cls_eval24": (BackboneConfig(name="vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=4,
                                      pool="cls"), 3, 16, 24),
    "vit_mean": (BackboneConfig(name="vit_small", embed_dim=48, depth=2, num_heads=3, patch_size=8,
                                pool="mean"), 1, 32, 32),
}


@pytest.fixture(scope="module")
def timm_cases():
    """name -> (our backbone with random weights, its timm tensors, their metadata, input size)."""
    out = {}
    for name, (cfg, channels, built, size) in TIMM_CASES.items():
        model = build_backbone(cfg, channels, built).eval()
        randomize(model)
        out[name] = (model, *to_timm(model, cfg, size), size)
    return out


# --- timm: names and shapes ----------------------------------------------------------------------

def test_resnet18_file_holds_timms_tensors_and_how_to_build_it(tmp_path):
    run = make_run(tmp_path, "backbone.width=1", "backbone.cifar_stem=false")
    path = export(run, "timm")
    assert path == run / "export" / "encoder_timm.safetensors"
    state, meta = read(path)
    assert shapes(state) == listed(RESNET18)
    assert meta["timm_model"] == "resnet18" and "timm_stem" not in meta
    assert json.loads(meta["timm_kwargs"]) == {"num_classes": 0, "in_chans": 3}
    assert json.loads(meta["mean"]) == pytest.approx([0.1, 0.2, 0.3])
    assert json.loads(meta["std"]) == pytest.approx([0.2, 0.3, 0.4])
    assert json.loads(meta["input_size"]) == [3, 16, 16]
    # The weights are the run's, renamed: nothing recomputed on the way.
    own = load_file(str(RunFolder(run).encoder))
    assert torch.equal(state["conv1.weight"], own["stem.0.weight"])
    assert torch.equal(state["bn1.running_var"], own["stem.1.running_var"])
    assert torch.equal(state["layer3.0.downsample.1.bias"], own["layer3.0.downsample.1.bias"])


def test_resnet50_and_vit_tiny_have_timms_names_and_shapes():
    resnet50 = build_backbone(BackboneConfig(name="resnet50", cifar_stem=False), 3, 224)
    state, meta = to_timm(resnet50, BackboneConfig(name="resnet50", cifar_stem=False), 224)
    assert shapes(state) == listed_modules(RESNET50) and len(state) == 318
    assert meta["timm_model"] == "resnet50"

    cfg = BackboneConfig(name="vit_tiny", patch_size=16, pool="cls")
    state, meta = to_timm(build_backbone(cfg, 3, 224), cfg, 224)
    blocks = "".join(VIT_TINY_BLOCK.format(i=i) for i in range(12))
    assert shapes(state) == listed(VIT_TINY_HEAD + blocks + VIT_TINY_TAIL) and len(state) == 150
    assert meta["timm_model"] == "vit_tiny_patch16_224"
    assert json.loads(meta["timm_kwargs"]) == {
        "num_classes": 0, "img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 192,
        "depth": 12, "num_heads": 3, "mlp_ratio": 4.0, "class_token": True, "global_pool": "token",
        "fc_norm": False}


def test_other_shapes_follow_the_encoder(timm_cases, tmp_path):
    """A CIFAR stem is a 3x3 conv with the fix in the metadata; a ViT's pos_embed has the
    evaluation grid (plus the class token's row, zero), or no class row with mean pooling."""
    _, state, meta, _ = timm_cases["resnet18_cifar_stem"]
    assert state["conv1.weight"].shape == (64, 1, 3, 3) and meta["timm_stem"] == "cifar"
    assert "model.maxpool = torch.nn.Identity()" in meta["timm_note"]
    assert "model.conv1 = torch.nn.Conv2d(1, 64, 3, padding=1, bias=False)" in meta["timm_note"]
    _, state, meta, _ = timm_cases["resnet18_cifar_stem_stride2"]
    assert "model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)" in meta["timm_note"]

    _, state, meta, _ = timm_cases["vit_mean"]
    assert "cls_token" not in state and state["pos_embed"].shape == (1, 16, 48)
    kwargs = json.loads(meta["timm_kwargs"])
    assert (kwargs["class_token"], kwargs["global_pool"], kwargs["fc_norm"]) == (False, "avg", False)

    # Through a run folder: the evaluation size, not the training views', sizes the model.
    run = make_run(tmp_path, *VIT, "backbone.pool=cls", "eval.size=24")
    state, meta = read(export(run, "timm"))
    assert state["pos_embed"].shape == (1, 1 + 6 * 6, 32) and not state["pos_embed"][0, 0].any()
    assert state["cls_token"].shape == (1, 1, 32) and state["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    assert json.loads(meta["timm_kwargs"])["img_size"] == 24 and json.loads(meta["input_size"]) == [3, 24, 24]
    # and the file's tensors compute what the run's encoder computes (the exporter's own path)
    enc = selfsup.load(run)
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(timm_vit_forward(state, x, json.loads(meta["timm_kwargs"])),
                                   enc.model(x), rtol=1e-5, atol=1e-5)


# --- timm: the numbers ---------------------------------------------------------------------------
# timm's forward, from timm/models/resnet.py and vision_transformer.py (BasicBlock, Bottleneck,
# downsample_conv; PatchEmbed, _pos_embed, Block, Attention, Mlp, forward_head), reading every
# tensor by timm's name.

def timm_resnet_forward(sd: dict, x: torch.Tensor, cifar_stem: bool, stem_stride: int = 1) -> torch.Tensor:
    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], False, 0.0, 1e-5)

    if cifar_stem:  # the metadata's fix: a 3x3 conv1 (of the stem's stride), maxpool an Identity
        x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=stem_stride, padding=1), "bn1"))
    else:
        x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage in range(1, 5):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p, stride = f"layer{stage}.{i}", 2 if stage > 1 and i == 0 else 1
            shortcut = x
            if f"{p}.downsample.0.weight" in sd:
                shortcut = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            if f"{p}.conv3.weight" in sd:  # Bottleneck: stride on the 3x3 conv
                y = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
                y = F.relu(bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
                y = bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:  # BasicBlock: stride on the first conv
                y = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                y = bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            x = F.relu(y + shortcut)
            i += 1
    return x.mean(dim=(2, 3))  # global_pool "avg", fc Identity (num_classes=0)


def timm_vit_forward(sd: dict, x: torch.Tensor, kw: dict) -> torch.Tensor:
    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-6)

    def linear(x, p):
        return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])

    assert x.shape[-1] == kw["img_size"]  # PatchEmbed's strict_img_size
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=kw["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    if kw["class_token"]:
        x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x], dim=1)
    x = x + sd["pos_embed"]  # no_embed_class=False: after the class token joins
    B, N, D = x.shape
    heads = kw["num_heads"]
    for i in range(kw["depth"]):
        p = f"blocks.{i}"
        qkv = linear(ln(x, f"{p}.norm1"), f"{p}.attn.qkv").reshape(B, N, 3, heads, D // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1) * (D // heads) ** -0.5).softmax(dim=-1) @ v
        x = x + linear(a.transpose(1, 2).reshape(B, N, D), f"{p}.attn.proj")
        x = x + linear(F.gelu(linear(ln(x, f"{p}.norm2"), f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
    fc_norm = kw["global_pool"] == "avg" if kw.get("fc_norm") is None else kw["fc_norm"]
    if not fc_norm:
        x = ln(x, "norm")
    x = x[:, 0] if kw["global_pool"] == "token" else x[:, int(kw["class_token"]):].mean(dim=1)
    return ln(x, "fc_norm") if fc_norm else x


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_tensors_compute_our_features(timm_cases, name):
    model, state, meta, size = timm_cases[name]
    channels = TIMM_CASES[name][1]
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if meta["timm_model"].startswith("resnet"):
            got = timm_resnet_forward(state, x, meta.get("timm_stem") == "cifar",
                                      int(meta.get("timm_stem_stride", 1)))
        else:
            got = timm_vit_forward(state, x, json.loads(meta["timm_kwargs"]))
        want = model(x)
    # A tensor in the wrong place moves the features by their own size (random weights), far
    # beyond float32 rounding.
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_timm_itself_loads_the_tensors_strictly(timm_cases, name):
    timm = pytest.importorskip("timm")
    model, state, meta, size = timm_cases[name]
    theirs = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"])).eval()
    if meta.get("timm_stem") == "cifar":
        theirs.conv1 = torch.nn.Conv2d(theirs.conv1.in_channels, 64, 3, padding=1, bias=False)
        theirs.maxpool = torch.nn.Identity()
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, TIMM_CASES[name][1], size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=1e-4, atol=1e-5)


# --- ONNX ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,channels", [
    (["backbone.width=0.125", "eval.size=24"], 1),  # a width timm cannot take; eval size != views
    ([*VIT, "backbone.pool=mean", "eval.size=24"], 3),  # sin-cos embeddings for the eval grid
], ids=["resnet18", "vit"])
def test_onnx_gives_pytorchs_features_at_any_batch_size(tmp_path, overrides, channels):
    for package in ("onnx", "onnxscript"):
        pytest.importorskip(package)
    ort = pytest.importorskip("onnxruntime")
    run = make_run(tmp_path, *overrides, channels=channels)
    path = export(run, "onnx")
    assert path == run / "export" / "encoder.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    # The batch is one symbol, in and out; the rest is fixed.
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [channels, 24, 24]
    assert outp.shape[0] == inp.shape[0] and len(outp.shape) == 2
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["input_size"]) == [channels, 24, 24]
    assert len(json.loads(props["mean"])) == len(json.loads(props["std"])) == channels
    enc = selfsup.load(run)
    for batch in (1, 5):  # the graph was traced at 2
        x = torch.randn(batch, channels, 24, 24, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {inp.name: x.numpy()})
        with torch.no_grad():
            want = enc.model(x)
        assert got.shape == (batch, enc.dim)
        assert (torch.from_numpy(got) - want).abs().max() < 1e-4


def test_onnx_without_its_packages_says_what_to_install(tmp_path, monkeypatch):
    run = make_run(tmp_path, *VIT, channels=1, weights=False)  # said before loading
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    one_line_refusal(lambda: export(run, "onnx"), "pip install", "onnxscript")
    assert not (run / "export" / "encoder.onnx").exists()


# --- refusals ------------------------------------------------------------------------------------

def test_unknown_format_is_refused_before_anything_is_read(tmp_path):
    run = make_run(tmp_path, weights=False)
    one_line_refusal(lambda: export(run, "torchscript"), "'torchscript'", "timm", "onnx")
    assert not (run / "export").exists()


@pytest.mark.parametrize("fmt,setting,advice", [
    ("timm", "backbone.name=igpt_s", "--format onnx"),  # timm has no iGPT
    ("timm", "backbone.width=0.125", "--format onnx"),  # nor a ResNet width multiplier
    ("timm", "backbone.input=L", "--format onnx"),  # nor an encoder that converts RGB to Lab
    ("onnx", "backbone.name=igpt_s", "torch.export"),  # its palette check stops the tracer
])
def test_encoders_a_format_cannot_hold_are_refused_naming_the_setting(tmp_path, fmt, setting, advice):
    # No weights in the run: the refusal comes before loading (a load would fail otherwise).
    run = make_run(tmp_path, setting, weights=False)
    one_line_refusal(lambda: export(run, fmt), setting, advice)


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    run = make_run(tmp_path, *VIT, channels=1)
    path = export(run / "encoder.safetensors", "timm")  # a file in the run: the run's export/
    assert path == run / "export" / "encoder_timm.safetensors"
    path.write_bytes(b"someone's file")
    one_line_refusal(lambda: export(run, "timm"), str(path), "--overwrite")
    assert path.read_bytes() == b"someone's file"
    assert export(run, "timm", overwrite=True) == path
    assert read(path)[1]["timm_model"] == "vit_tiny_patch16_224"

    mine = tmp_path / "elsewhere" / "mine.safetensors"
    assert export(run, "timm", mine) == mine and mine.exists()  # its folder is created
    one_line_refusal(lambda: export(run, "timm", mine), str(mine))
    one_line_refusal(lambda: export(run, "timm", tmp_path, overwrite=True), str(tmp_path), "folder")
    assert not list(mine.parent.glob(".tmp-*")) and not list(path.parent.glob(".tmp-*"))
