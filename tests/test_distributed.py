"""A real 2-process DDP run over gloo, launched with torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.methods import METHODS
from selfsup.train.runlog import read_metrics

pytestmark = pytest.mark.distributed

# (method, state) pairs kept equal on every rank by gathering: queue entries, DINO's and iBOT's
# centres; and the two-player method's critic, which only its own DDP wrapper keeps equal.
CROSS_RANK_STATE = [("mocov2", "queue.features"), ("mocov2", "queue.ptr"), ("dino", "center"),
                    ("swav", "queue"), ("ibot", "center"), ("ibot", "center_patch"),
                    ("two_player", "critic.0.weight")]


def test_two_process_gloo_run(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["world"] == 2
    assert res["loss"] < 1e-5 and res["grad"] < 1e-5
    assert res["queue_ok"], "a pushed queue must hold the keys of every rank, in rank order"
    assert sorted(res["methods"]) == sorted(METHODS)
    for method, r in res["methods"].items():
        # Global batch 64 split 32 + 32: digits' 1437 training images give 22 steps an epoch.
        assert r["steps_per_epoch"] == 1437 // 64 and r["steps"] == 6, method
        assert r["encoder"], method
        for name, s in r["state"].items():
            a, b = s["sums"]
            assert a == b, f"{method}: {name} differs between ranks ({a} vs {b})"
    # The state that needs cross-rank communication is really updated, not merely equal.
    for method, name in CROSS_RANK_STATE:
        if method in res["methods"]:
            assert res["methods"][method]["state"][name]["changed"], f"{method}: {name} never moved"

    # SimCLR streamed from 15 PNG shards of the digits (1,438 images), each rank with a decoding
    # worker process: the ranks read disjoint images, none twice, a whole number of local
    # batches of 32 each step; DDP keeps the weights equal; the end-of-run k-NN streams the test
    # split.
    s = res["shards"]
    assert s["steps"] == s["steps_per_epoch"] > 0
    seen = s["seen"]
    assert [len(r) for r in seen] == [32 * s["steps"]] * 2
    assert len(set(seen[0]) | set(seen[1])) == 2 * 32 * s["steps"] and max(seen[0] + seen[1]) < 1438
    assert s["weights"][0] == s["weights"][1]
    assert read_metrics(tmp_path / "from-shards", "knn")

    # A time budget (trainer.minutes) with rank 1's clock running twice as fast: both ranks take
    # rank 0's estimate of the run's length and stop together, well short of the 20 epochs.
    b = res["budget"]
    assert b["steps"][0] == b["steps"][1] and 0 < b["steps"][0] < b["asked"]
