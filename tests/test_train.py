"""The training loop for every registered method: steps, checkpoints, exact resume, NaN stop."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config
from selfsup.config import ConfigError, load_config
from selfsup.methods import METHODS
from selfsup.methods.schedules import Progress
from selfsup.run import load_encoder
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer, TrainingDiverged


def tiny(tmp_path, *extra, method="simclr"):
    return tiny_config(method, f"trainer.out={tmp_path}", *extra)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_round_trips(tmp_path, method):
    cfg = tiny(tmp_path, "trainer.knn_every=0", method=method)
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    run = trainer.fit()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    rows = read_metrics(run, "train")
    assert rows and all(r["loss"] == r["loss"] for r in rows)
    assert read_metrics(run, "knn")[-1]["top1"] > 10.0  # digits, 10 classes: above chance
    for name in ("config.yaml", "encoder.safetensors", "normalization.json"):
        assert (run / name).exists()
    assert list((run / "tb").iterdir()), "no TensorBoard events"

    # Checkpoint round trip: a fresh model loaded from disk computes the same loss.
    weights, state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == trainer.total_steps
    fresh = Trainer(cfg, run_dir=run)
    assert fresh.resume() and fresh.step == trainer.total_steps
    views = trainer.make_views(trainer.images[:8], aug_seed=0)
    trainer.model.eval(), fresh.model.eval()
    with torch.no_grad():
        p = Progress(0, 1, 1)
        assert torch.equal(trainer.model(views, p)[0], fresh.model(views, p)[0])
    encoder = load_encoder(run, cfg, in_channels=1)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, after[f"backbone.{k}"])


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_exactly(tmp_path, method):
    """Stopped right after a mid-run checkpoint and resumed, a run ends with the weights, teacher,
    queue and centre of an uninterrupted one."""
    cfg = tiny(tmp_path, "trainer.epochs=2", "trainer.checkpoint_every_steps=7",
               "trainer.checkpoint_every=100", "trainer.knn_every=-1", method=method)
    whole = Trainer(cfg, run_dir=tmp_path / "whole")
    whole.fit()

    cut = Trainer(cfg, run_dir=tmp_path / "cut")
    save = cut.save

    def save_then_die():
        save()
        if cut.step == 14:
            raise _Killed

    cut.save = save_then_die
    with pytest.raises(_Killed):
        cut.fit()
    resumed = Trainer(cfg, run_dir=tmp_path / "cut")
    assert resumed.resume() and resumed.step == 14
    resumed.fit()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def _cli(*args):
    return [sys.executable, "-m", "selfsup.cli", *args]


def _final_weights(run: Path) -> dict:
    weights, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    return weights


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    common = [*TINY, "trainer.epochs=3", "trainer.checkpoint_every_steps=4", f"trainer.out={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_cli("pretrain", "--run-dir", str(whole), *common, "trainer.threads=1"),
                   check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli("pretrain", "--run-dir", str(cut), *common, "trainer.threads=1"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "checkpoints" / "step_00000008").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = latest_checkpoint(cut / "checkpoints")
    assert ckpt is not None and not (cut / "encoder.safetensors").exists(), "killed too late"
    subprocess.run(_cli("pretrain", "--resume", str(cut), "trainer.threads=1"), check=True, env=env,
                   capture_output=True)
    a, b = _final_weights(whole), _final_weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, "trainer.epochs=3", "trainer.lr=1e30", "trainer.optimizer=sgd",
               "trainer.log_every=1", "trainer.checkpoint_every_steps=1")
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="Last good checkpoint"):
        trainer.fit()
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    if ckpt is not None:  # every saved checkpoint holds finite weights
        weights, _ = load_checkpoint(ckpt)
        assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_batch_larger_than_dataset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="larger than the training set"):
        Trainer(tiny(tmp_path, "trainer.batch_size=100000"), run_dir=tmp_path / "r")


@pytest.mark.parametrize("opt,clip", [("sgd", "null"), ("adamw", "null"), ("lars", "0.5")])
def test_optimizers_step(tmp_path, opt, clip):
    cfg = tiny(tmp_path, f"trainer.optimizer={opt}", "trainer.lr=0.05", "trainer.epochs=1",
               f"trainer.grad_clip={clip}")
    run = Trainer(cfg, run_dir=tmp_path / opt).fit()
    assert read_metrics(run, "train")


def test_fractional_epochs_end_mid_epoch_with_a_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, "trainer.epochs=1.5"), run_dir=tmp_path / "run")
    assert trainer.total_steps == round(1.5 * trainer.steps_per_epoch)
    run = trainer.fit()
    assert trainer.step == trainer.total_steps
    _, state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == trainer.total_steps
