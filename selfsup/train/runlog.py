"""What a run writes as it goes: metrics as JSON lines, TensorBoard events, a console line."""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfsup.runfolder import RunFolder


class RunLog:
    """Appends `{"kind": ..., **values}` lines to metrics.jsonl and scalars to TensorBoard.
    Only the main process writes; other ranks get `RunLog(None)`, which does nothing. Values may
    be numbers, strings or 0-dim tensors (read here, at the log point)."""

    def __init__(self, run: RunFolder | None, tensorboard: bool = True):
        self._file = None
        self._tb = None
        if run is None:
            return
        self._file = open(run.metrics, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run.tensorboard))

    def log(self, kind: str, step: int, **values) -> None:
        if self._file is None:
            return
        clean = {k: (float(v) if isinstance(v, float) or hasattr(v, "item") else v)
                 for k, v in values.items()}
        self._file.write(json.dumps({"kind": kind, "step": step, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def image(self, tag: str, image, step: int) -> None:
        """A uint8 [H, W, 3] picture to TensorBoard's images tab."""
        if self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    path = RunFolder(run_dir).metrics
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
