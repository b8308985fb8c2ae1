"""Learning tests on real data: pretraining must beat a random-init backbone, not merely run.

Each method trains from its quick CIFAR-10 recipe on an 8k-image subset for 3 epochs (about
90 steps) and must beat the k-NN top-1 of the same network at random initialisation by a clear
margin. Runs this short need a few method settings changed; they are listed below with why.
"""

import pytest

from conftest import SHARED_DATA, needs_cifar10
from selfsup.config import load_config
from selfsup.eval.protocols import linear_eval
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer

pytestmark = [pytest.mark.slow, needs_cifar10]

SHORT = ["data.subset=8000", "trainer.epochs=3", "trainer.warmup_epochs=0.5",
         "trainer.knn_bank=8000", "trainer.knn_every=0", "trainer.progress=false",
         "trainer.checkpoint_every=100"]

# method -> (recipe, settings for a 90-step run, the margin over random init it must clear)
# Measured on a 2-core CPU (random init 25.8 %): SimCLR 39.4 %, MoCo v2 34.1 %, MoCo v3 35.4 %,
# BYOL 31.4 % (32.1 % after 6 epochs: it starts slowly), DINO 33.0 %. The margins leave room for
# run-to-run noise (BYOL at seed 1: +3.1 against +5.6 at seed 0).
CASES = {
    "simclr": ("quick_cifar10", [], 8.0),
    "mocov2": ("quick_cifar10_mocov2", [], 5.0),
    "mocov3": ("quick_cifar10_mocov3", [], 6.0),
    "byol": ("quick_cifar10_byol", [], 3.0),
    "dino": ("quick_cifar10_dino", [], 4.0),
    # Pretext tasks (their quick recipes: batch 128, so 186 steps), measured on a busy 2-core CPU
    # (random init 25.8 % k-NN, 31.6 % linear): rotation 31.3 % k-NN / 35.6 % linear, jigsaw
    # 28.0 / 34.9, damaged jigsaw 27.9 / 33.1, relative patch position 29.4 / 32.1
    # (it barely moves the linear probe in this budget: the margin there is only > 0). SimCLR in
    # the same run: 40.8 / 44.5.
    "rotation": ("quick_cifar10_rotation", [], 3.0),
    "jigsaw": ("quick_cifar10_jigsaw", [], 1.0),
    "damaged_jigsaw": ("quick_cifar10_damaged_jigsaw", [], 1.0),
    "relpatch": ("quick_cifar10_relpatch", [], 1.5),
}

# The pretext tasks must also beat the linear probe of the random-init network (8k training
# images, CIFAR-10 test set): method -> margin in points, from the measurements above.
LINEAR_MARGIN = {"rotation": 2.0, "jigsaw": 1.5, "damaged_jigsaw": 0.5, "relpatch": 0.0}


def linear_top1(trainer: Trainer, cfg) -> float:
    res = linear_eval(trainer.model.backbone, trainer.train_set, trainer.test_set, trainer.mean,
                      trainer.std, cfg.eval, size=cfg.eval.size, device=trainer.device,
                      precision="bf16" if trainer.amp_dtype is not None else "fp32")
    trainer.model.train()
    return res["top1"]


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_beats_random_init_on_cifar10(tmp_path, method):
    """k-NN for every method; for the pretext tasks also the linear probe, from the same run."""
    recipe, extra, margin = CASES[method]
    cfg = load_config(recipe, [f"data.root={SHARED_DATA}", *SHORT, *extra, f"trainer.out={tmp_path}"])
    assert cfg.method.name == method
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    random_init = trainer.knn()["top1"]  # the same network, same seed, before any step
    linear = method in LINEAR_MARGIN
    random_linear = linear_top1(trainer, cfg) if linear else None
    trainer.fit()
    trained = read_metrics(tmp_path / "run", "knn")[-1]["top1"]
    print(f"k-NN top-1 on CIFAR-10 test: random init {random_init:.2f} %, {method} {trained:.2f} %")
    assert trained > random_init + margin
    if linear:
        trained_linear = linear_top1(trainer, cfg)
        print(f"linear top-1: random init {random_linear:.2f} %, {method} {trained_linear:.2f} %")
        assert trained_linear > random_linear + LINEAR_MARGIN[method]
