"""Faults in a real run: SIGKILL at seeded moments (in a step, in a checkpoint write, in an
evaluation, and between checkpoints), each followed by `--resume`, must end with the weights of
the uninterrupted run; a NaN mid-run stops with the last good checkpoint intact, and the run
resumes from it with a lower learning rate."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config
from selfsup.train.checkpoint import checkpoints, latest_checkpoint, load_checkpoint, verify_checkpoint
from selfsup.train.step import TrainingDiverged
from selfsup.train.trainer import Trainer

HERE = Path(__file__).parent
# 22 steps an epoch on digits; 33 in all, a checkpoint every 4 steps, online k-NN after epoch 1.
RUN = [*TINY, "trainer.epochs=1.5", "trainer.checkpoint_every_steps=4", "trainer.knn_every=1",
       "trainer.threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(HERE), os.environ.get("PYTHONPATH", "")])}


def _pretrain(*args: str, moment: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, str(HERE / "kill_worker.py"), moment[0], str(moment[1]), "--"] if moment
           else [sys.executable, "-m", "selfsup.cli", "pretrain"])
    return subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=300)


def _steps(run: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in checkpoints(run / "checkpoints")]


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -9, f"not killed (exit {proc.returncode}): {proc.stderr[-2000:]}"


def test_kill_at_seeded_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    rng = random.Random(2026)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = _pretrain("--run-dir", str(whole), *RUN)
    assert done.returncode == 0, done.stderr[-2000:]

    # 1. In a step: after the backward pass of step k, before its optimizer step.
    k = rng.randint(6, 12)
    _killed(_pretrain("--run-dir", str(cut), *RUN, moment=("step", k)))
    assert max(_steps(cut)) < k and not (cut / "encoder.safetensors").exists()

    # 2. In a checkpoint write, after resuming: the weights file written, the state not.
    _killed(_pretrain("--resume", str(cut), moment=("checkpoint", rng.randint(1, 2))))
    assert list((cut / "checkpoints").glob(".tmp-step_*")), "the write was not cut short"

    # 3. In the online evaluation after epoch 1 (step 22): features extracted, no result.
    _killed(_pretrain("--resume", str(cut), moment=("evaluation", 1)))
    assert not list((cut / "checkpoints").glob(".tmp-*")), "a resumed run left the partial write"
    assert max(_steps(cut)) == 22

    # 4. Between checkpoints, by the clock: when a seeded later checkpoint appears.
    target = cut / "checkpoints" / f"step_{rng.choice([24, 28]):08d}"
    proc = subprocess.Popen([sys.executable, "-m", "selfsup.cli", "pretrain", "--resume", str(cut)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not target.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (cut / "encoder.safetensors").exists(), "killed too late"

    final = _pretrain("--resume", str(cut))
    assert final.returncode == 0, final.stderr[-2000:]
    a, b = (load_checkpoint(latest_checkpoint(run / "checkpoints")) for run in (whole, cut))
    assert a[1]["step"] == b[1]["step"] == 33
    for key in a[0]:
        assert torch.equal(a[0][key], b[0][key]), f"{key} differs after four kills and resumes"
    for ckpt in checkpoints(cut / "checkpoints"):
        assert verify_checkpoint(ckpt) is None


def _poison(trainer: Trainer, from_step: int) -> None:
    """Make the first set's loss NaN from step `from_step` (0-based) on."""
    s = trainer.sets[0]
    loss = s.loss

    def poisoned(views, progress):
        out = loss(views, progress)
        return out._replace(loss=out.loss * float("nan")) if progress.step >= from_step else out

    s.loss = poisoned


def test_nan_mid_run_keeps_the_last_good_checkpoint_and_resumes_with_a_lower_lr(tmp_path):
    args = [f"trainer.out={tmp_path}", "trainer.log_every=1", "trainer.checkpoint_every_steps=3",
            "trainer.epochs=0.5"]
    run = tmp_path / "run"
    trainer = Trainer(tiny_config("simclr", *args), run_dir=run)
    _poison(trainer, from_step=7)  # the 8th step's loss, and the weights after it, are NaN
    with pytest.raises(TrainingDiverged, match="model loss is nan at step 8.*step_00000006"):
        trainer.fit()
    assert _steps(run) == [3, 6] and all(verify_checkpoint(p) is None for p in checkpoints(run / "checkpoints"))
    weights, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert all(torch.isfinite(v.float()).all() for v in weights.values())

    lower = tiny_config("simclr", *args, "trainer.lr=0.1")
    again = Trainer(lower, run_dir=run)
    assert again.resume() and again.step == 6
    again.fit()
    assert again.step == again.total_steps == 11
    assert all(torch.isfinite(v.float()).all() for v in again.model.state_dict().values()
               if v.is_floating_point())
