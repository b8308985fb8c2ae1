"""A finished or interrupted run folder, read back: its config, its encoder, its data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config, ConfigError, build_config
from selfsup.runfolder import RunFolder
from selfsup.train.checkpoint import (PREFIX, CheckpointError, load_checkpoint, load_weights,
                                      newest_good_checkpoint)
from selfsup.train.trainer import build_model


def find_run_dir(path: str | Path) -> Path:
    """The run folder for a run folder, a checkpoint folder inside it, or a file inside either."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    for candidate in [p, *p.parents][:4]:
        if RunFolder(candidate).config.exists():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {p} or its parents: is it a selfsup run folder?")


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The run's config.yaml plus overrides; a refusal names the file as well as the key."""
    path = RunFolder(run_dir).config
    try:
        return build_config(path, list(overrides))
    except ConfigError as e:
        raise ConfigError(e if str(path) in str(e) else f"{path}: {e}") from None


def _checkpoint_state(p: Path) -> dict:
    """The method's weights in the checkpoint folder `p`, or in the latest one of the run `p`."""
    ckpt = p if p.name.startswith(PREFIX) else newest_good_checkpoint(RunFolder(p).checkpoints)
    if ckpt is None:
        raise CheckpointError(f"{p} has no checkpoint that verifies")
    return load_checkpoint(ckpt)[0]


def encoder_weights(path: str | Path) -> dict:
    """The backbone's weights at `path`: the run's encoder.safetensors, a .safetensors file, a
    checkpoint folder, or (for a run folder without an exported encoder) its latest checkpoint."""
    p = Path(path)
    if p.is_dir() and RunFolder(p).encoder.exists():
        return load_weights(RunFolder(p).encoder)
    if p.suffix == ".safetensors":
        return load_weights(p)
    try:
        state = _checkpoint_state(p)
    except CheckpointError as e:
        raise CheckpointError(f"{p} has no encoder.safetensors, and {e}") from None
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def _fill(module: nn.Module, weights: dict, p: Path, what: str) -> nn.Module:
    try:
        missing, unexpected = module.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape: weights of another configuration
        raise CheckpointError(f"weights at {p} do not fit {what}: {str(e).splitlines()[-1].strip()[:300]}") from None
    if missing or unexpected:
        raise CheckpointError(f"weights at {p} do not fit {what}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return module


def _fitted(module: nn.Module) -> list[str]:
    """State-dict names of what the data fitted before training (codebooks, iGPT's palette): the
    `fitted_buffers` of a module and of its backbone (see selfsup/protocol.py)."""
    names = list(getattr(module, "fitted_buffers", ()))
    backbone = getattr(module, "backbone", None)
    if isinstance(backbone, nn.Module):
        names += [f"backbone.{n}" for n in getattr(backbone, "fitted_buffers", ())]
    return names


def _at_init(module: nn.Module, weights: dict, p: Path) -> nn.Module:
    """`module` as built (the run's initialisation) plus the fitted buffers from `weights`."""
    names = _fitted(module)
    missing = [n for n in names if n not in weights]
    if missing:
        raise CheckpointError(f"weights at {p} lack {missing[0]}, which the data fitted before training")
    module.load_state_dict({n: weights[n] for n in names}, strict=False)
    return module


def load_encoder(path: str | Path, cfg: Config, in_channels: int, random_init: bool = False) -> nn.Module:
    """The backbone of `cfg` with the weights at `path` (see `encoder_weights`). random_init: the
    network the run started from instead (the trainer seeds with trainer.seed, then builds the
    backbone first), keeping only what the data fitted before training (a backbone's
    `fitted_buffers`, e.g. iGPT's palette): the random-init baseline of the same encoder."""
    if random_init:
        torch.manual_seed(cfg.trainer.seed)
    backbone = build_backbone(cfg.backbone, in_channels=in_channels, image_size=cfg.views.size)
    weights = encoder_weights(path) if not random_init or _fitted(backbone) else {}
    p = Path(path)
    source = RunFolder(p).encoder if p.is_dir() and RunFolder(p).encoder.exists() else p  # for messages
    if random_init:
        return _at_init(backbone, weights, source)
    return _fill(backbone, weights, source, f"backbone {cfg.backbone.name}")


def load_method(path: str | Path, cfg: Config, in_channels: int, random_init: bool = False) -> nn.Module:
    """The whole method of `cfg` (backbone and heads) with the weights of the latest checkpoint
    of the run `path`, or of the checkpoint folder `path`. random_init: the method as the
    trainer built it before its first step (seeded with trainer.seed, backbone first), with
    the fitted buffers (codebooks, palette) of that checkpoint."""
    if random_init:
        torch.manual_seed(cfg.trainer.seed)
    method = build_model(cfg, in_channels)
    state = _checkpoint_state(Path(path))
    if random_init:
        return _at_init(method, state, Path(path))
    return _fill(method, state, Path(path), f"method {cfg.method.name}")
