"""`selfsup export`: a run's encoder as a file that other tools load without selfsup.

timm (RUN/export/encoder_timm.safetensors): exactly the state dict of timm's model of the same
architecture without its classifier, the model's name and arguments in the file's metadata:

    from safetensors import safe_open
    from safetensors.torch import load_file
    meta = safe_open(path, "pt").metadata()
    model = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"]))  # num_classes=0
    model.load_state_dict(load_file(path))  # strict
    z = model(x)  # pooled features, x normalised with json.loads(meta["mean"]), meta["std"]

ResNet-18/34/50 become timm's resnet18/34/50, whose names are torchvision's: only our stem (a
Sequential) is renamed, to conv1 and bn1. ViTs become vit_{tiny,small,base}_patch16_224 with our
image size (the evaluation size), patch size, width, depth and heads; `class_token` and
`global_pool` follow backbone.pool, and `fc_norm=False` because our mean pool comes after the
final norm, where timm's "avg" default would normalise after pooling. Our fixed sin-cos position
embeddings are written out as timm's learned `pos_embed`, with a zero row for the class token,
which carries no position here (as in MAE's own timm checkpoints).

What timm cannot express:
- the CIFAR stem (3x3 stride-1 conv, no max-pool): timm's ResNet stem is a 7x7 stride-2 conv or a
  three-conv "deep" stem, always followed by a stride-2 pool, and takes no argument for ours. The
  file is still written, with `timm_stem: cifar` and the two-line fix in `timm_note`: replace
  `model.conv1` and `model.maxpool` before loading. Refusing would leave every CIFAR recipe
  without a timm export, for a fix a user makes in two lines.
- a ResNet width other than 1: refused. timm's single-conv stem is 64 channels whatever its
  `channels` argument says, so layer1 would see another input width and get a shortcut conv
  ours lacks: no timm model holds these weights.
- iGPT: timm has no such model.
ONNX has none of these limits, but cannot take iGPT yet: its palette lookup checks in Python that
the palette was built (selfsup/parts/codebook.py), which torch.export cannot trace.

onnx (RUN/export/encoder.onnx): images [B, C, S, S] float, normalised, S the evaluation size
(eval.size, else views.size) -> pooled features [B, D]; B is dynamic. The metadata_props carry
the mean, std and input size. torch's exporter needs the onnx and onnxscript packages;
onnxruntime runs the file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from selfsup.api import load
from selfsup.backbones import BackboneConfig, ResNet, VisionTransformer
from selfsup.backbones.vit import sincos_pos_embed
from selfsup.errors import SelfsupError
from selfsup.run import find_run_dir, load_run_config
from selfsup.runfolder import RunFolder
from selfsup.train.checkpoint import save_weights

# format -> file written under RUN/export/ when no output is given.
FORMATS = {"timm": "encoder_timm.safetensors", "onnx": "encoder.onnx"}

# Our backbone names -> timm's model names. The ViT names only pick the registry entry: every
# architecture argument is passed explicitly (timm's create_model lets them override its defaults).
TIMM_MODELS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}
# Backbones torch's ONNX exporter cannot trace, and why.
ONNX_REFUSED = {"igpt_s": "its palette lookup checks in Python that the palette was built "
                          "(selfsup/parts/codebook.py), which torch.export cannot trace"}
TMP = ".tmp-"  # as selfsup.train.checkpoint: a half-written file never has the final name


class ExportError(SelfsupError):
    """An encoder that has no counterpart in the format asked, a missing exporter package, or an
    output that is in the way."""


def export(run: str | Path, fmt: str, out: str | Path | None = None, *,
           overwrite: bool = False) -> Path:
    """Write the run's encoder as `fmt` ("timm" or "onnx"); return the file written.

    run: a run folder, a checkpoint folder in it, or a .safetensors file in it (as `selfsup.load`:
        those weights). out: the file to write (default RUN/export/encoder_timm.safetensors or
        RUN/export/encoder.onnx); its folder is created. overwrite: replace an existing `out`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dir = find_run_dir(run)
    path = Path(out) if out is not None else RunFolder(run_dir).exports / FORMATS[fmt]
    if path.is_dir():
        raise ExportError(f"{path} is a folder: give the file to write")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists: replace it with --overwrite (overwrite=True), or choose "
                          f"another output")
    backbone = load_run_config(run_dir).backbone  # refusals come before loading any weights
    if fmt == "timm":
        timm_name(backbone)
    else:
        if backbone.name in ONNX_REFUSED:
            raise ExportError(f"backbone.name={backbone.name} cannot be exported to ONNX yet: "
                              f"{ONNX_REFUSED[backbone.name]}")
        _check_onnx_packages()
    enc = load(run)
    meta = {"mean": json.dumps(enc.mean), "std": json.dumps(enc.std),
            "input_size": json.dumps([enc.channels, enc.size, enc.size]),
            "selfsup_backbone": enc.config.backbone.name, "selfsup_method": enc.config.method.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "timm":
        _write_timm(enc.model, enc.config.backbone, enc.size, meta, path)
    else:
        _write_onnx(enc.model, enc.channels, enc.size, meta, path)
    return path


# --- timm ----------------------------------------------------------------------------------------

def timm_name(cfg: BackboneConfig) -> str:
    """timm's model name for the backbone `cfg`, or an ExportError saying why it has none."""
    if cfg.input != "rgb":
        raise ExportError(f"backbone.input={cfg.input} has no timm counterpart: the encoder converts "
                          f"its RGB input to Lab itself (selfsup/backbones/colour.py); export it "
                          f"with --format onnx")
    if cfg.name not in TIMM_MODELS:
        raise ExportError(f"backbone.name={cfg.name} has no timm counterpart (timm exports: "
                          f"{', '.join(TIMM_MODELS)}); export it with --format onnx")
    if cfg.name.startswith("resnet") and cfg.width != 1:
        raise ExportError(f"backbone.width={cfg.width} has no timm counterpart: timm's ResNet has no "
                          f"width multiplier (its stem is 64 channels whatever `channels` says); "
                          f"export it with --format onnx")
    return TIMM_MODELS[cfg.name]


def to_timm(model: nn.Module, cfg: BackboneConfig, size: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(the backbone's tensors under timm's names and shapes, metadata: timm_model, timm_kwargs as
    JSON, and for the CIFAR stem timm_stem and timm_note). model: the backbone built from `cfg`;
    size: the input side the timm model is built for (a ViT's img_size and pos_embed length)."""
    name = timm_name(cfg)
    if isinstance(model, ResNet):
        state, kwargs, extra = _resnet_to_timm(model)
    elif isinstance(model, VisionTransformer):
        state, kwargs, extra = _vit_to_timm(model, size)
    else:
        raise ExportError(f"backbone.name={cfg.name} built a {type(model).__name__}, which has no "
                          f"timm mapping")
    return state, {"timm_model": name, "timm_kwargs": json.dumps({"num_classes": 0, **kwargs}), **extra}


def _resnet_to_timm(m: ResNet) -> tuple[dict[str, Tensor], dict, dict[str, str]]:
    # timm kept torchvision's names (conv1, bn1, layerN.M.convK / bnK / downsample.0-1, in the
    # same block layout, stride on the Bottleneck's 3x3 conv): only our stem Sequential differs.
    stem = {"stem.0.": "conv1.", "stem.1.": "bn1."}
    state = {}
    for k, v in m.state_dict().items():
        prefix = next((p for p in stem if k.startswith(p)), None)
        if prefix is None and not k.startswith("layer"):
            raise RuntimeError(f"no timm name for ResNet tensor {k}")  # a new tensor must not vanish
        state[stem[prefix] + k[len(prefix):] if prefix else k] = v
    in_chans = m.stem[0].weight.shape[1]
    extra = {}
    if m.cifar_stem:
        out, stride = m.stem[0].out_channels, m.stem_stride
        strided = f"stride={stride}, " if stride != 1 else ""
        conv = f"torch.nn.Conv2d({in_chans}, {out}, 3, {strided}padding=1, bias=False)"
        extra = {"timm_stem": "cifar", "timm_stem_stride": str(stride),
                 "timm_note": f"CIFAR stem, which timm's ResNet cannot build: before load_state_dict set "
                              f"model.conv1 = {conv} and model.maxpool = torch.nn.Identity()"}
    return state, {"in_chans": in_chans}, extra


def _vit_to_timm(m: VisionTransformer, size: int) -> tuple[dict[str, Tensor], dict, dict[str, str]]:
    p, d, c = m.patch_size, m.embed_dim, m.in_channels
    if size % p:
        raise ExportError(f"the evaluation size {size} (eval.size, else views.size) is not a multiple "
                          f"of backbone.patch_size={p}")
    cls = m.cls_token is not None
    pos = sincos_pos_embed(d, size // p, size // p)  # fixed here, learned in timm: written out
    if cls:  # the class token carries no position (MAE adds a zero embedding to it)
        pos = torch.cat([pos.new_zeros(1, d), pos])
    own = m.state_dict()
    state = {"pos_embed": pos[None]}
    if cls:
        state["cls_token"] = own.pop("cls_token")
    # Our Linear reads patchify's (row, column, channel) pixel order; timm's stride-p conv has
    # its kernel as [D, C, p, p]: the same weights, reordered.
    state["patch_embed.proj.weight"] = own.pop("patch_embed.weight").reshape(d, p, p, c).permute(0, 3, 1, 2)
    state["patch_embed.proj.bias"] = own.pop("patch_embed.bias")
    for k, v in own.items():
        if not k.startswith(("blocks.", "norm.")):
            raise RuntimeError(f"no timm name for ViT tensor {k}")  # a new tensor must not vanish
        # timm's Mlp names its layers fc1 / fc2 where our Sequential numbers them 0 (Linear), 2.
        state[k.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")] = v
    block = m.blocks[0]
    kwargs = {"img_size": size, "patch_size": p, "in_chans": c, "embed_dim": d,
              "depth": len(m.blocks), "num_heads": block.attn.num_heads,
              "mlp_ratio": block.mlp[0].out_features / d, "class_token": cls,
              "global_pool": "token" if cls else "avg", "fc_norm": False}
    return state, kwargs, {}


def _write_timm(model: nn.Module, cfg: BackboneConfig, size: int, meta: dict[str, str], path: Path) -> None:
    state, timm_meta = to_timm(model, cfg, size)
    save_weights(path, state, {**timm_meta, **meta})


# --- ONNX ----------------------------------------------------------------------------------------

def _check_onnx_packages() -> None:
    missing = []
    for package in ("onnx", "onnxscript"):  # torch's exporter builds the graph with both
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ExportError(f"--format onnx needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}: pip install {' '.join(missing)}")


def _write_onnx(model: nn.Module, channels: int, size: int, meta: dict[str, str], path: Path) -> None:
    # Two images, not one: torch.export would take a batch of 1 for a constant.
    x = torch.zeros(2, channels, size, size)
    with _quiet_exporter():
        program = torch.onnx.export(model.eval(), (x,), None, input_names=["images"],
                                    output_names=["features"], dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    program.model.metadata_props.update(meta)
    tmp = path.with_name(TMP + path.name)
    program.save(str(tmp), external_data=False)  # one file: encoders are far under ONNX's 2 GB
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_exporter():
    """Hide what torch's exporter says about itself (torchvision ops it skips, deprecations of
    its internals): nothing a user can act on. Its errors still raise."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        log.setLevel(level)
