"""The layout of a run folder: every file name a run writes or reads, defined here and nowhere else.

    RUN/config.yaml              the resolved configuration (`selfsup pretrain --resume RUN`)
    RUN/metrics.jsonl            one JSON object per line: train, knn, done
    RUN/tb/                      TensorBoard events
    RUN/checkpoints/step_N/      model.safetensors + state.pt (see selfsup/train/checkpoint.py)
    RUN/encoder.safetensors      the trained backbone's weights
    RUN/normalization.json       the per-channel mean and std the encoder expects
    RUN/<picture>.png            a method's last picture grid; RUN/pictures/<picture>_step_N.png
    RUN/eval_<protocol>.json     an evaluation's result (eval_<protocol>_random.json: random init)
    RUN/eval_<protocol>_layers.png  accuracy against depth (eval.layer=all)
    RUN/eval_<protocol>_checkpoints.json / .png  held-out loss and top-1 at every checkpoint
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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

    def write_stats(self, mean: list[float], std: list[float]) -> None:
        self.normalization.write_text(json.dumps({"mean": mean, "std": std}))

    def read_stats(self) -> tuple[list[float], list[float]] | None:
        if not self.normalization.exists():
            return None
        d = json.loads(self.normalization.read_text())
        return d["mean"], d["std"]
