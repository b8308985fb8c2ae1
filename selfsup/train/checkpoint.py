"""Checkpoints that survive a kill at any moment and load without executing code.

Each checkpoint is a folder `checkpoints/step_NNNNNNNN/` holding `model.safetensors` (the method's
weights and buffers) and `state.pt` (optimizer, counters, random-generator states: tensors and
plain containers only, read with `torch.load(weights_only=True)`). The folder is written under a
temporary name and renamed into place, so a folder with a final name is always complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step_"


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a copy on the CPU is what it writes anyway.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(ckpt_dir: Path, model_state: dict, train_state: dict, step: int,
                    keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` (0: none)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model_state), str(tmp / "model.safetensors"), metadata={"step": str(step)})
    torch.save(train_state, tmp / "state.pt")
    for f in tmp.iterdir():  # the data must be on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:  # keep 0: every checkpoint stays
        for old in sorted(ckpt_dir.glob(f"{PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(Path(ckpt_dir).glob(f"{PREFIX}*")) if Path(ckpt_dir).exists() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state, train state) from a checkpoint folder."""
    path = Path(path)
    model_file, state_file = path / "model.safetensors", path / "state.pt"
    for f in (model_file, state_file):
        if not f.exists():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {f.name} is missing")
    return load_file(str(model_file)), torch.load(state_file, weights_only=True, map_location="cpu")


def save_weights(path: Path, state: dict, metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, written atomically (the exported encoder)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file(_tensors(state), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
