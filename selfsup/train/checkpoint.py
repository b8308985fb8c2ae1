"""Checkpoints that survive a kill at any moment, prove they are whole, and load without
executing code.

Each checkpoint is a folder `checkpoints/step_NNNNNNNN/` holding `model.safetensors` (the method's
weights and buffers), `state.pt` (optimizer, counters, random-generator states: tensors and plain
containers only, read with `torch.load(weights_only=True)`) and `manifest.json` (the step, and
the size and SHA-256 of both files). The folder is written under a temporary name, flushed to
disk and renamed into place, so a folder with a final name was complete when it was written;
the manifest tells whether it still is (a disk that lost or damaged a file since, a copy cut
short). Resuming takes the newest checkpoint that verifies and says which ones it passed over.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from selfsup.errors import SelfsupError

PREFIX = "step_"
TMP = ".tmp-"
MANIFEST = "manifest.json"
FILES = ("model.safetensors", "state.pt")


class CheckpointError(SelfsupError):
    """A checkpoint or weights file that is missing, damaged or not what selfsup wrote."""


class CheckpointWarning(UserWarning):
    """A checkpoint was passed over (it failed verification); an older one was used."""


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a copy on the CPU is what it writes anyway.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the files themselves were synced
        pass
    finally:
        os.close(fd)


def remove_partial(ckpt_dir: Path) -> list[Path]:
    """Delete what an interrupted write left: `.tmp-*` folders and files. Call it only while
    holding the run folder's lock (selfsup/runfolder.py), when no other writer can be mid-write."""
    ckpt_dir = Path(ckpt_dir)
    found = sorted(ckpt_dir.glob(f"{TMP}*")) if ckpt_dir.is_dir() else []
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return found


def save_checkpoint(ckpt_dir: Path, model_state: dict, train_state: dict, step: int,
                    keep: int = 1) -> Path:
    """Write checkpoint `step` atomically with its manifest, then delete all but the newest
    `keep` (0: none)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f"{TMP}{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model_state), str(tmp / FILES[0]), metadata={"step": str(step)})
    torch.save(train_state, tmp / FILES[1])
    manifest = {"step": step, "files": {name: {"size": (tmp / name).stat().st_size,
                                               "sha256": _sha256(tmp / name)} for name in FILES}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for f in tmp.iterdir():  # the data must be on disk before the rename makes it visible
        _fsync(f)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(ckpt_dir)  # and the rename itself
    if keep > 0:  # keep 0: every checkpoint stays
        for old in checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(ckpt_dir: Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    return sorted(p for p in ckpt_dir.glob(f"{PREFIX}*") if p.is_dir()) if ckpt_dir.is_dir() else []


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = checkpoints(ckpt_dir)
    return found[-1] if found else None


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint folder is whole, else why not. A checkpoint written before
    manifests existed is checked by loading it."""
    path = Path(path)
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    if not (path / MANIFEST).is_file():
        try:
            load_checkpoint(path, verify=False)
        except CheckpointError as e:
            return str(e)
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        expected = {name: manifest["files"][name] for name in FILES}
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for name, want in expected.items():
        size = (path / name).stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, the manifest says {want.get('size')}"
        if _sha256(path / name) != want.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def load_checkpoint(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state, train state) from a checkpoint folder, verified against its manifest."""
    path = Path(path)
    if verify:
        problem = verify_checkpoint(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
    state_file = path / FILES[1]
    weights = load_weights(path / FILES[0])
    try:
        state = torch.load(state_file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower() or "unsupported operand" in str(e).lower():
            raise CheckpointError(f"{state_file} holds objects other than tensors and plain "
                                  f"containers; selfsup never writes those and will not run code "
                                  f"from it") from None
        raise CheckpointError(f"{state_file} is not a torch file (damaged?)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{state_file} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{state_file} is not a selfsup training state (no step)")
    return weights, state


def newest_good_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that verifies, warning about each newer one passed over."""
    for path in reversed(checkpoints(ckpt_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipped checkpoint {path}: {problem}", CheckpointWarning, stacklevel=2)
    return None


def save_weights(path: Path, state: dict, metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, written atomically (the exported encoder)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP}{path.name}")
    save_file(_tensors(state), str(tmp), metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(truncated or damaged?): {str(e).splitlines()[0]}") from None
