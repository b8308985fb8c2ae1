"""Fine-tuning evaluation: layer-decay groups, loss, subsets, backbones, the CLI. Tiny models on
scikit-learn's digits (offline); a few seconds each on a 2-core CPU."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import LinearBackbone
from selfsup.backbones import BackboneConfig, VisionTransformer, build_backbone
from selfsup.cli import main
from selfsup.config import ConfigError, build_config
from selfsup.data import ImageSet, dataset_stats, load_dataset
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import Classifier, FinetuneConfig, finetune, finetune_optimizer, layer_depths
from selfsup.eval.knn import topk_accuracy

# Few steps at a high lr: a from-scratch 8-channel ResNet learns digits in ~40 steps.
FAST = dict(epochs=2, batch_size=64, lr=3e-2, warmup_epochs=0.5, size=16, flip_p=0.0, scale=[0.5, 1.0])


def tiny_vit(pool="mean", depth=2):
    return VisionTransformer(in_channels=1, image_size=16, patch_size=4, embed_dim=32, depth=depth,
                             num_heads=2, pool=pool, drop_path=0.05)


def tiny_resnet():
    return build_backbone(BackboneConfig(name="resnet18", width=0.125), in_channels=1, image_size=16)


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    return train, test, *dataset_stats(train)


def _lrs(model, opt):
    """name -> (lr, weight_decay) of each parameter's group."""
    where = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    return {n: where[id(p)] for n, p in model.named_parameters()}


def test_layer_decay_groups_vit():
    model = Classifier(tiny_vit(pool="cls"), 10)
    lrs = _lrs(model, finetune_optimizer(model, FinetuneConfig(layer_decay=0.5, weight_decay=0.05), peak=1.0))
    # depth 0 embedding, 1..2 blocks, 3 final norm + head: lr = 0.5 ** (3 - depth)
    expect = {"backbone.patch_embed": 0.125, "backbone.cls_token": 0.125, "backbone.blocks.0.": 0.25,
              "backbone.blocks.1.": 0.5, "backbone.norm": 1.0, "head": 1.0}
    for name, (lr, wd) in lrs.items():
        prefix = next(k for k in expect if name.startswith(k))
        assert lr == pytest.approx(expect[prefix]), name
        param = dict(model.named_parameters())[name]
        no_decay = param.ndim == 1 or name == "backbone.cls_token"
        assert wd == (0.0 if no_decay else 0.05), name
    assert layer_depths(model.backbone)[1] == 3


def test_layer_decay_groups_resnet():
    model = Classifier(tiny_resnet(), 10)
    lrs = _lrs(model, finetune_optimizer(model, FinetuneConfig(layer_decay=0.5), peak=2.0))
    depth = {"stem": 0, "layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}
    for name, (lr, wd) in lrs.items():
        parts = name.split(".")
        d = depth[parts[1]] if parts[0] == "backbone" else 5
        assert lr == pytest.approx(2.0 * 0.5 ** (5 - d)), name
        assert (wd == 0.0) == (dict(model.named_parameters())[name].ndim == 1), name


def test_unknown_backbone_is_one_group_and_says_so():
    model = Classifier(LinearBackbone(), 3)
    lrs = _lrs(model, finetune_optimizer(model, FinetuneConfig(layer_decay=0.5), peak=1.0))
    assert {lr for lr, _ in lrs.values()} == {1.0}
    assert "not applied" in layer_depths(model.backbone)[2]


def test_label_smoothing_is_used(digits, monkeypatch):
    train, test, mean, std = digits
    seen = []
    real = F.cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    cfg = FinetuneConfig(**{**FAST, "epochs": 0.05}, label_smoothing=0.2, train_subset=200, test_subset=50)
    finetune(tiny_resnet(), train, test, mean, std, cfg)
    assert seen and set(seen) == {0.2}


def test_finetune_improves_over_its_starting_point(digits):
    train, test, mean, std = digits
    torch.manual_seed(0)
    backbone = tiny_resnet()
    start = Classifier(backbone, 10, torch.Generator().manual_seed(0))
    before = topk_accuracy(extract_features(start, test.images, mean, std, size=16), test.labels)["top1"]
    res = finetune(backbone, train, test, mean, std, FinetuneConfig(**FAST))
    assert res["top1"] > before + 30 and res["top1"] > 60, (before, res["top1"])
    assert res["loss"] < math.log(10) and res["train_images"] == len(train) and res["steps"] == 2 * (len(train) // 64)
    assert "layer-wise lr decay 0.75" in res["protocol"] and "label smoothing 0.1" in res["protocol"]


@pytest.mark.parametrize("make", [lambda: tiny_vit("mean"), lambda: tiny_vit("cls"), tiny_resnet],
                         ids=["vit-mean", "vit-cls", "resnet"])
def test_every_backbone_trains_end_to_end(digits, make):
    train, test, mean, std = digits
    torch.manual_seed(0)
    backbone = make()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rates = [b.drop_path for b in backbone.blocks] if hasattr(backbone, "blocks") else None
    cfg = FinetuneConfig(**{**FAST, "epochs": 1, "lr": 1e-2}, train_subset=320, test_subset=100, drop_path=0.2)
    res = finetune(backbone, train, test, mean, std, cfg)
    assert res["train_images"] == 320 and res["test_images"] == 100 and math.isfinite(res["loss"])
    assert 0 <= res["top1"] <= 100 and "top5" in res and 0 <= res["train_top1"] <= 100
    changed = [k for k, v in backbone.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith(("patch_embed", "stem")) for k in changed)  # the lowest layer learns too
    if rates is not None:  # drop path was raised for training only
        assert [b.drop_path for b in backbone.blocks] == rates
        assert "drop path 0.2" in res["protocol"] and backbone.pool.replace("cls", "class token") in res["protocol"]
    else:
        assert "no drop path" in res["protocol"] and "global average pool" in res["protocol"]


def test_same_seed_same_result(digits):
    train, test, mean, std = digits
    cfg = FinetuneConfig(**{**FAST, "epochs": 0.5}, train_subset=256, test_subset=100)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(finetune(tiny_vit(), train, test, mean, std, cfg))
    assert runs[0]["top1"] == runs[1]["top1"] and runs[0]["loss"] == runs[1]["loss"]


def test_config_keys_and_values_are_checked():
    cfg = build_config(["eval.finetune.lr=0.002", "eval.finetune.train_subset=5000"])
    assert cfg.eval.finetune.lr == 0.002 and cfg.eval.finetune.train_subset == 5000
    with pytest.raises(ConfigError, match="lrr"):
        build_config(["eval.finetune.lrr=1"])
    with pytest.raises(ConfigError, match="layer_decay"):
        build_config(["eval.finetune.layer_decay=1.5"])
    with pytest.raises(ConfigError, match="scale"):
        build_config(["eval.finetune.scale=[0.5,2.0]"])


def test_needs_labels(digits):
    train, test, mean, std = digits
    with pytest.raises(ValueError, match="labels"):
        finetune(tiny_resnet(), ImageSet(train.images), test, mean, std, FinetuneConfig(**FAST))


# -- the command ------------------------------------------------------------------------------
TINY_RUN = ["backbone.width=0.125", "views.size=16", "trainer.batch_size=64", "trainer.epochs=1",
            "trainer.progress=false", "trainer.knn_every=-1", "method.proj_hidden=32", "method.proj_dim=16"]
FT = ["eval.finetune.epochs=1", "eval.finetune.batch_size=64", "eval.finetune.lr=0.03",
      "eval.finetune.train_subset=640", "eval.finetune.test_subset=200"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ft") / "run"
    assert main(["pretrain", "--recipe", "quick", "--run-dir", str(run), *TINY_RUN]) == 0
    return run


def test_cli_finetune_and_random_init(tiny_run, capsys):
    assert main(["eval", "finetune", str(tiny_run), *FT]) == 0
    assert "finetune top-1:" in capsys.readouterr().out
    res = json.loads((tiny_run / "eval_finetune.json").read_text())
    assert res["train_images"] == 640 and res["test_images"] == 200 and "flip p=0" in res["protocol"]
    assert res["weights"] == str(tiny_run) and 0 <= res["top1"] <= 100

    assert main(["eval", "finetune", str(tiny_run), "--random-init", *FT]) == 0
    rand = json.loads((tiny_run / "eval_finetune_random.json").read_text())
    assert "random init" in rand["protocol"] and rand["steps"] == res["steps"]


def test_cli_recipe_sits_between_run_and_command_line(tiny_run):
    assert main(["eval", "finetune", str(tiny_run), "--recipe", "finetune_quick_cifar10", *FT,
                 "eval.finetune.epochs=0.5"]) == 0
    res = json.loads((tiny_run / "eval_finetune.json").read_text())
    assert res["epochs"] == 0.5 and res["recipe"] == "finetune_quick_cifar10"


def test_cli_errors_are_one_line(tiny_run, capsys):
    assert main(["eval", "finetune", str(tiny_run), "eval.finetune.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "lrr" in err and err.count("\n") == 1
    assert main(["eval", "finetune", str(tiny_run), "eval.finetune.optimizer=lamb"]) == 2
    assert "optimizer" in capsys.readouterr().err
    assert main(["eval", "finetune", str(tiny_run), "--recipe", "no_such_recipe"]) == 2
    assert main(["pretrain", "--recipe", "finetune_quick_cifar10"]) == 2
    assert "selfsup eval finetune" in capsys.readouterr().err


def test_recipes_lists_both_kinds(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    pre, fine = out.split("fine-tuning")
    assert "quick_cifar10 " in pre and "finetune_quick_cifar10" in fine and "finetune_" not in pre
