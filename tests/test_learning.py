"""Learning tests on real data: pretraining must beat the same network at random initialisation,
not merely run. The budget and the cases are in learning_cases.py: every method trains briefly on
CIFAR-10 and must clear a measured margin over the random-init network on k-NN and on a linear
probe, both from one feature extraction. The random-init baseline is evaluated once for all the
methods that share the network.
"""

import pytest

from conftest import SHARED_DATA, needs_cifar10
from learning_cases import CASES, case_overrides, fingerprint
from selfsup.config import load_config
from selfsup.train.trainer import Trainer

pytestmark = [pytest.mark.slow, needs_cifar10]


@pytest.fixture(scope="session")
def random_init():
    """{(backbone fingerprint, eval settings): results} of the random-init networks seen so far."""
    return {}


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_beats_random_init_on_cifar10(tmp_path, method, random_init):
    recipe, overrides = case_overrides(method, SHARED_DATA, tmp_path)
    _, _, knn_margin, linear_margin = CASES[method]
    trainer = Trainer(load_config(recipe, overrides), run_dir=tmp_path / "run")
    key = (fingerprint(trainer.model.backbone), trainer.cfg.eval.size, trainer.cfg.data.subset)
    if key not in random_init:  # the same network, same seed, before any step
        random_init[key] = trainer.evaluate(("knn", "linear"))
    before = random_init[key]
    trainer.fit()
    after = trainer.evaluate(("knn", "linear"))
    for p in ("knn", "linear"):
        print(f"{method} {p} top-1 on CIFAR-10 test: random init {before[p]['top1']:.2f} %, "
              f"trained {after[p]['top1']:.2f} %")
    assert after["knn"]["top1"] > before["knn"]["top1"] + knn_margin
    assert after["linear"]["top1"] > before["linear"]["top1"] + linear_margin
