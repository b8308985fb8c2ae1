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
from selfsup.protocol import Progress, hook
from selfsup.train.trainer import Trainer

pytestmark = [pytest.mark.slow, needs_cifar10]

# 2,000 images in steps of 128; the quick recipes' 128-wide ViT/4 (4 blocks), cut to 2 for the
# token predictors.
# fp32 on every CPU, as the margins were measured (see learning_cases.py).
SHORT = ["data.subset=2000", "trainer.batch_size=128", "trainer.warmup_epochs=0.3", "trainer.precision=fp32",
         "trainer.knn_every=-1", "trainer.progress=false", "trainer.checkpoint_every=100"]
TOKENS = ["method.vocab_size=128", "method.tokenizer_images=1000", "method.tokenizer_patches=10000"]

# method -> (its changes, the drop in held-out loss to clear). Measured on the 2-core CPU at
# seeds 0 and 1 (held-out loss at random init -> trained): MAE, 30 steps: 2.174 -> 0.861 and
# 2.465 -> 0.876 (with 2 blocks: 0.963 at seed 1, above the 0.95 the test asks for); BEiT, 15
# steps: 4.871 -> 4.604 and 4.875 -> 4.605 (token accuracy above the majority token's share);
# SplitMask, 15 steps with a 1-block decoder: 11.165 -> 8.545 and 11.146 -> 8.762.
CASES = {"mae": (["trainer.epochs=2"], 0.5),
         "beit": (["backbone.depth=2", "trainer.epochs=1"], 0.13),
         "splitmask": (["backbone.depth=2", "trainer.epochs=1", "method.decoder_depth=1"], 1.2)}


def held_out_loss(trainer: Trainer, images: torch.Tensor) -> tuple[float, dict]:
    views = trainer.make_views(images, aug_seed=12345)  # the same crops and masks every call
    model = trainer.model.eval()
    with torch.no_grad():
        loss, metrics, _ = model(views, Progress(0, 1, 1))
    model.train()
    return float(loss), {k: float(v) for k, v in (metrics or {}).items()}


@pytest.mark.parametrize("method", sorted(CASES))
def test_masked_model_learns_its_task_on_held_out_images(tmp_path, method):
    changes, margin = CASES[method]
    overrides = [f"data.root={SHARED_DATA}", *SHORT, *changes, *([] if method == "mae" else TOKENS),
                 f"trainer.out={tmp_path}"]
    cfg = load_config(f"quick_cifar10_{method}", overrides)
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    pick = torch.randperm(len(trainer.test_set), generator=torch.Generator().manual_seed(0))[:256]
    held_out = trainer.test_set.images[pick]
    init = hook(trainer.model, "init_from_data")
    if init:  # the codebook, as training would build it
        init(lambda k: trainer.sample_views(k, cfg.trainer.seed), seed=cfg.trainer.seed)
    before, _ = held_out_loss(trainer, held_out)
    trainer.fit()
    after, metrics = held_out_loss(trainer, held_out)
    print(f"{method}: held-out loss {before:.3f} at random init -> {after:.3f} trained; {metrics}")
    assert after < before - margin
    if method == "mae":
        assert after < 0.95  # below predicting each normalised patch's mean (47/48 for 4x4x3)
    else:
        views = trainer.make_views(held_out, aug_seed=12345)
        p = trainer.model.backbone.patch_size
        tokens = trainer.model.tokenizer(patchify(views[0], p))
        majority = tokens.flatten().bincount().max().item() / tokens.numel()
        assert metrics["token_acc"] > majority
