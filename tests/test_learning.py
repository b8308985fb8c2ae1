"""Learning tests on real data: pretraining must beat a random-init backbone, not merely run."""

import pytest
import torch

from conftest import SHARED_DATA, needs_cifar10
from selfsup.config import load_config
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer

pytestmark = [pytest.mark.slow, needs_cifar10]


def test_simclr_beats_random_init_on_cifar10(tmp_path):
    cfg = load_config("quick_cifar10", [
        f"data.root={SHARED_DATA}", "data.subset=10000", "backbone.width=0.25",
        "trainer.epochs=4", "trainer.batch_size=256", "trainer.warmup_epochs=0.5",
        "trainer.knn_bank=10000", "trainer.knn_every=0", "trainer.progress=false",
        "trainer.checkpoint_every=100", f"trainer.out={tmp_path}"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    random_init = trainer.knn()["top1"]  # the same network, same seed, before any step
    trainer.fit()
    trained = read_metrics(tmp_path / "run", "knn")[-1]["top1"]
    print(f"k-NN top-1 on CIFAR-10 test: random init {random_init:.2f} %, SimCLR {trained:.2f} %")
    assert trained > random_init + 8.0
