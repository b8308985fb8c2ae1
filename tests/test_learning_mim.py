"""Learning tests for the masked image models on real data.

Their k-NN accuracy is no test after a short run: MAE's mean-pooled features are known to be poor
for k-NN and linear probes (He et al. 2021 §4.3), and measured here (4k CIFAR-10 images, 4
epochs, 2k test images) they stay below random init's (24.8 % against 27.2 %); their strength is
fine-tuning, which the closing note of the issue measures. What a minute of training must show
is that the model has learnt the pretext task on images it never saw: on held-out CIFAR-10 test
images, with the same masks, the trained model's loss is well below the same network's at random
initialisation, and below the trivial predictor's (MAE: predicting each normalised patch's mean,
loss 47/48 for 4x4x3 patches; token prediction: always the most frequent token).
"""

import pytest
import torch

from conftest import SHARED_DATA, needs_cifar10
from selfsup.backbones.vit import patchify
from selfsup.config import load_config
from selfsup.methods.schedules import Progress
from selfsup.train.trainer import Trainer

pytestmark = [pytest.mark.slow, needs_cifar10]

SHORT = ["data.subset=2000", "trainer.batch_size=128", "trainer.epochs=2", "trainer.warmup_epochs=0.3",
         "trainer.knn_every=-1", "trainer.progress=false", "trainer.checkpoint_every=100"]
TOKENS = ["method.vocab_size=128", "method.tokenizer_images=1000", "method.tokenizer_patches=10000"]

# Measured on the 2-core CPU (held-out loss, random init -> trained, 30 steps of 128 images):
# MAE 2.17 -> 0.86, BEiT 4.89 -> 4.45 (token accuracy 5.4 %), SplitMask 11.08 -> 7.89.
CASES = {"mae": 0.5, "beit": 0.2, "splitmask": 1.5}  # the drop in held-out loss to clear


def held_out_loss(trainer: Trainer, images: torch.Tensor) -> tuple[float, dict]:
    views = trainer.make_views(images, aug_seed=12345)  # the same crops and masks every call
    model = trainer.model.eval()
    with torch.no_grad():
        loss, metrics = model(views, Progress(0, 1, 1))
    model.train()
    return float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("method", sorted(CASES))
def test_masked_model_learns_its_task_on_held_out_images(tmp_path, method):
    overrides = [f"data.root={SHARED_DATA}", *SHORT, *([] if method == "mae" else TOKENS),
                 f"trainer.out={tmp_path}"]
    cfg = load_config(f"quick_cifar10_{method}", overrides)
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    pick = torch.randperm(len(trainer.test_set), generator=torch.Generator().manual_seed(0))[:256]
    held_out = trainer.test_set.images[pick]
    if hasattr(trainer.model, "init_from_data"):  # the codebook, as training would build it
        trainer.model.init_from_data(lambda k: trainer.sample_views(k, cfg.trainer.seed),
                                     seed=cfg.trainer.seed)
    before, _ = held_out_loss(trainer, held_out)
    trainer.fit()
    after, metrics = held_out_loss(trainer, held_out)
    print(f"{method}: held-out loss {before:.3f} at random init -> {after:.3f} trained; {metrics}")
    assert after < before - CASES[method]
    if method == "mae":
        assert after < 0.95  # below predicting each normalised patch's mean (47/48 for 4x4x3)
    else:
        views = trainer.make_views(held_out, aug_seed=12345)
        p = trainer.model.backbone.patch_size
        tokens = trainer.model.tokenizer(patchify(views[0], p))
        majority = tokens.flatten().bincount().max().item() / tokens.numel()
        assert metrics["token_acc"] > majority
