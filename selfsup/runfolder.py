"""The layout of a run folder: every file name a run writes or reads, defined here and nowhere else.

    RUN/config.yaml              the resolved configuration (`selfsup pretrain --resume RUN`)
    RUN/metrics.jsonl            one JSON object per line: train, knn, done
    RUN/tb/                      TensorBoard events
    RUN/checkpoints/step_N/      model.safetensors + state.pt (see selfsup/train/checkpoint.py)
    RUN/encoder.safetensors      the trained backbone's weights
    RUN/normalization.json       the per-channel mean and std the encoder expects
    RUN/tokenizer.json           an image-text method's tokenizer (selfsup/data/text.py)
    RUN/<picture>.png            a method's last picture grid; RUN/pictures/<picture>_step_N.png
    RUN/eval_<protocol>.json     an evaluation's result (eval_<protocol>_random.json: random init)
    RUN/eval_<protocol>_layers.png  accuracy against depth (eval.layer=all)
    RUN/eval_<protocol>_checkpoints.json / .png  held-out loss and top-1 at every checkpoint
    RUN/export/                  `selfsup export`: encoder_timm.safetensors, encoder.onnx
    RUN/.lock                    held by the process training in the folder (its pid inside)

One run writes in a folder at a time: `lock` takes an exclusive lock for the life of a run, and a
new run refuses a folder that holds another run's files (`check_new`) unless told to resume it or
to overwrite it (`clear`, which removes only the files named above).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from selfsup.errors import SelfsupError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

# What a run writes, as glob patterns under the folder: all that `clear` may remove.
RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "encoder.safetensors",
             "normalization.json", "tokenizer.json", "report.html", "pictures", "*.png", "eval_*.json", "export",
             ".tmp-*")
LOCK = ".lock"


class RunFolderError(SelfsupError):
    """A run folder that is in use, or holds another run, or is not a run folder."""


def default_run_dir(out: str, run_name: str | None, recipe: str) -> Path:
    """out/(run_name, else <recipe>-<time>): trainer.out and trainer.run_name. A name of the
    latter kind that is taken (two runs started in the same second) gets a -2, -3, ... suffix."""
    if run_name:
        return Path(out) / run_name
    base = Path(out) / f"{recipe}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder at `path` (nothing is created or read by building one)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def encoder(self) -> Path:
        return self.path / "encoder.safetensors"

    @property
    def normalization(self) -> Path:
        return self.path / "normalization.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def exports(self) -> Path:
        """`selfsup export`'s default folder (selfsup/export.py names the files)."""
        return self.path / "export"

    def picture(self, name: str, step: int | None = None) -> Path:
        """A picture grid: the last one (step None) in the folder, earlier ones under pictures/."""
        if step is None:
            return self.path / f"{name}.png"
        return self.path / "pictures" / f"{name}_step_{step}.png"

    def eval_result(self, protocol: str, random_init: bool = False) -> Path:
        return self.path / f"eval_{protocol}{'_random' if random_init else ''}.json"

    def eval_track(self, protocol: str, suffix: str = ".json") -> Path:
        """The checkpoint-by-checkpoint result of a protocol (`--checkpoints`): .json or .png."""
        return self.path / f"eval_{protocol}_checkpoints{suffix}"

    def eval_plot(self, protocol: str) -> Path:
        """The every-layer plot of a protocol (trained and random init where measured)."""
        return self.path / f"eval_{protocol}_layers.png"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def contents(self) -> list[Path]:
        """What is in the folder besides its lock (nothing when it does not exist)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name != LOCK)

    def check_new(self, overwrite: bool = False) -> None:
        """Refuse to start a new run here if the folder holds anything (it would mix two runs'
        metrics, and a later --resume would load the old run's checkpoint), unless `overwrite`
        and it is a selfsup run folder; refuse a path that is a file."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} is a file")
        found = self.contents()
        if not found:
            return
        if not overwrite:
            raise RunFolderError(
                f"run folder {self.path} is not empty ({', '.join(p.name for p in found[:3])}"
                f"{', ...' if len(found) > 3 else ''}): continue it with --resume {self.path}, "
                f"replace it with --overwrite, or choose another --run-dir")
        if not self.config.exists():
            raise RunFolderError(f"--overwrite: {self.path} is not a selfsup run folder (no "
                                 f"config.yaml); it is left alone: choose an empty or new folder")

    def clear(self) -> None:
        """Remove what a run wrote (RUN_FILES), nothing else."""
        for pattern in RUN_FILES:
            for p in self.path.glob(pattern):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def lock(self) -> RunLock:
        """Take the folder's exclusive lock (creating the folder), or raise RunFolderError naming
        the process that holds it. The lock goes with the process, so a killed run frees it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        self._take(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return RunLock(fd)

    def check_unlocked(self) -> None:
        """Fail now, before data is read, if another process holds the folder's lock (without
        taking it: the trainer does, when it starts)."""
        if self.lock_file.exists():
            fd = os.open(self.lock_file, os.O_RDWR)
            self._take(fd)
            RunLock(fd).release()

    def _take(self, fd: int) -> None:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"run folder {self.path} is in use by another selfsup process "
                                 f"(pid {holder}); wait for it to end or choose another --run-dir") from None

    def write_stats(self, mean: list[float], std: list[float]) -> None:
        self.normalization.write_text(json.dumps({"mean": mean, "std": std}))

    def read_stats(self) -> tuple[list[float], list[float]] | None:
        if not self.normalization.exists():
            return None
        try:
            d = json.loads(self.normalization.read_text())
            mean, std = [float(v) for v in d["mean"]], [float(v) for v in d["std"]]
        except (ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{self.normalization} is damaged ({type(e).__name__}: {e}); "
                                 f"delete it to recompute the statistics from the data") from None
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise RunFolderError(f"{self.normalization} is damaged: needs as many means as positive "
                                 f"stds; delete it to recompute the statistics from the data")
        return mean, std


class RunLock:
    """A held run-folder lock; `release` (or the end of the process) frees it."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        else:
            msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
        os.close(self.fd)
        self.fd = None
