"""A finished or interrupted run folder, read back: its config, its encoder, its data."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config, build_config
from selfsup.runfolder import RunFolder
from selfsup.train.checkpoint import PREFIX, latest_checkpoint, load_checkpoint, load_weights


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
    return build_config(RunFolder(run_dir).config, list(overrides))


def load_encoder(path: str | Path, cfg: Config, in_channels: int) -> nn.Module:
    """The backbone of `cfg` with the weights at `path`: the run's encoder.safetensors, a
    checkpoint folder, or (for a run folder without an exported encoder) its latest checkpoint."""
    p = Path(path)
    run = RunFolder(p)
    if p.is_dir() and run.encoder.exists():
        weights = load_weights(run.encoder)
    elif p.suffix == ".safetensors":
        weights = load_weights(p)
    else:
        ckpt = p if p.name.startswith(PREFIX) else latest_checkpoint(run.checkpoints)
        if ckpt is None:
            raise FileNotFoundError(f"{p} has neither encoder.safetensors nor a checkpoint")
        state, _ = load_checkpoint(ckpt)
        weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone = build_backbone(cfg.backbone, in_channels=in_channels, image_size=cfg.views.size)
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights at {p} do not fit backbone {cfg.backbone.name}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return backbone
