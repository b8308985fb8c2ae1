"""A real 2-process DDP run over gloo, launched with torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed


def test_two_process_gloo_run(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["world"] == 2
    assert res["loss"] < 1e-5 and res["grad"] < 1e-5
    # Global batch 64 split 32 + 32: digits' 1437 training images give 22 steps an epoch.
    assert res["steps"] == res["steps_per_epoch"] == 1437 // 64
    a, b = res["param_sums"]
    assert a == b, "ranks' weights diverged"
    assert (tmp_path / "run" / "encoder.safetensors").exists()
