"""A finished or interrupted run folder, read back: its config, its encoder, its data."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config, build_config
from selfsup.train.checkpoint import PREFIX, latest_checkpoint, load_checkpoint, load_weights


def find_run_dir(path: str | Path) -> Path:
    """The run folder for a run folder, a checkpoint folder inside it, or a file inside either."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    for candidate in [p, *p.parents][:4]:
        if (candidate / "config.yaml").exists():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {p} or its parents: is it a selfsup run folder?")


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    return build_config(run_dir / "config.yaml", list(overrides))


def load_encoder(path: str | Path, cfg: Config, in_channels: int) -> nn.Module:
    """The backbone of `cfg` with the weights at `path`: the run's encoder.safetensors, a
    checkpoint folder, or (for a run folder without an exported encoder) its latest checkpoint."""
    p = Path(path)
    if p.is_dir() and (p / "encoder.safetensors").exists():
        weights = load_weights(p / "encoder.safetensors")
    elif p.suffix == ".safetensors":
        weights = load_weights(p)
    else:
        ckpt = p if p.name.startswith(PREFIX) else latest_checkpoint(p / "checkpoints")
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


def write_stats(run_dir: Path, mean: list[float], std: list[float]) -> None:
    (Path(run_dir) / "normalization.json").write_text(json.dumps({"mean": mean, "std": std}))


def read_stats(run_dir: Path) -> tuple[list[float], list[float]] | None:
    f = Path(run_dir) / "normalization.json"
    if not f.exists():
        return None
    d = json.loads(f.read_text())
    return d["mean"], d["std"]

