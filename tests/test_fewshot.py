"""Few-label linear probes (selfsup/eval/fewshot.py, `selfsup eval fewshot`): class-balanced,
seeded subsets of the training split; mean and std over draws as a direct computation gives
them; the random-init baseline in the same table."""

import dataclasses
import json
import statistics

import pytest
import torch

from conftest import TINY
from selfsup.cli import main
from selfsup.data import load_dataset
from selfsup.eval.finetune import finetune
from selfsup.eval.fewshot import FewshotConfig, fewshot_probe, probe_settings
from selfsup.eval.linear import LinearConfig, linear_probe
from selfsup.eval.subsets import stratified_subset
from selfsup.run import load_encoder, load_run_config
from selfsup.runfolder import RunFolder

LINEAR = LinearConfig(epochs=20)


def clusters(n_per_class=(30, 20, 50), dim=8, seed=0):
    """Features of 3 classes around 3 centres (unequal class sizes), and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), dim, generator=g) * 2
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def test_draws_are_class_balanced_seeded_and_averaged_as_written():
    tr, tr_y = clusters()
    te, te_y = clusters((40, 40, 40), seed=1)
    cfg = FewshotConfig(per_class=[4, 25], fractions=[0.1], draws=3)
    res = fewshot_probe(tr, tr_y, te, te_y, cfg=cfg, linear=LINEAR)
    assert [r["setting"] for r in res["settings"]] == ["4 per class", "25 per class", "10 % of each class"]
    # 25 per class: the 20-image class gives all it has
    assert [r["labels"] for r in res["settings"]] == [12, 25 + 20 + 25, 3 + 2 + 5]
    for row, kind in zip(res["settings"], [{"per_class": 4}, {"per_class": 25}, {"fraction": 0.1}]):
        accs = []
        for seed in range(3):
            idx, _ = stratified_subset(tr_y, seed, **kind)
            counts = torch.bincount(tr_y[idx], minlength=3).tolist()
            if "per_class" in kind:
                assert counts == [min(kind["per_class"], n) for n in (30, 20, 50)]
            accs.append(linear_probe(tr[idx], tr_y[idx], te, te_y, cfg=probe_settings(LINEAR, tr_y[idx]),
                                     seed=seed)["top1"])
        assert [d["top1"] for d in row["draws"]] == accs
        assert row["mean"] == pytest.approx(statistics.mean(accs))
        assert row["std"] == pytest.approx(statistics.stdev(accs))
    assert res["top1"] == res["settings"][0]["mean"] and res["top1_std"] == res["settings"][0]["std"]
    # seeded: another call gives the same; the draws differ from one another
    again = fewshot_probe(tr, tr_y, te, te_y, cfg=cfg, linear=LINEAR)
    assert again["settings"] == res["settings"]
    a, b = (stratified_subset(tr_y, s, per_class=4)[0] for s in (0, 1))
    assert not torch.equal(a, b)


def test_the_held_out_share_leaves_every_class_an_image_or_no_search():
    def share(counts):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        return probe_settings(LinearConfig(), y).val_fraction

    assert share([4, 4]) == 0.25 and share([2, 9]) == 0.5 and share([40, 50]) == 0.1
    assert share([1, 30]) == 0.0  # a class of one image: no search, eval.linear.weight_decay


def test_fewshot_command_puts_the_random_init_baseline_in_the_same_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--run-dir", str(run), *TINY, "trainer.epochs=0.3"]) == 0
    small = ["eval.fewshot.per_class=[2,10]", "eval.fewshot.draws=2", "eval.linear.epochs=10"]
    assert main(["eval", "fewshot", str(run), "--random-init", *small]) == 0
    capsys.readouterr()
    assert main(["eval", "knn,fewshot", str(run), *small]) == 0
    out = capsys.readouterr().out
    assert "| encoder | 2 per class (20 labels) | 10 per class (100 labels) |" in out
    assert "| trained, linear probe |" in out and "| random init, linear probe |" in out
    res = json.loads((run / "eval_fewshot.json").read_text())
    assert [r["labels"] for r in res["settings"]] == [20, 100] and len(res["settings"][0]["draws"]) == 2
    assert "few-label linear probe" in res["protocol"] and (run / "eval_knn.json").exists()
    assert "finetune" not in res


def test_fewshot_fine_tuning_tunes_a_fresh_copy_on_each_draws_subset(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--run-dir", str(run), *TINY, "trainer.epochs=0.3", "trainer.precision=fp32"]) == 0
    small = ["eval.fewshot.per_class=[2,10]", "eval.fewshot.draws=2", "eval.linear.epochs=10",
             "eval.fewshot.finetune=true", "eval.finetune.epochs=2", "eval.finetune.batch_size=16"]
    assert main(["eval", "fewshot", str(run), *small]) == 0
    assert "| trained, fine-tuned |" in capsys.readouterr().out
    tuned = json.loads((run / "eval_fewshot.json").read_text())["finetune"]
    assert [r["labels"] for r in tuned["settings"]] == [20, 100]
    assert "few-label fine-tuning" in tuned["protocol"]
    # Each draw against a direct computation: the encoder as loaded, fine-tuned on that subset.
    cfg = load_run_config(run, small)
    train, test = (load_dataset(cfg.data.name, split) for split in (cfg.data.train_split, cfg.data.test_split))
    mean, std = RunFolder(run).read_stats()
    fcfg = dataclasses.replace(cfg.eval.finetune, size=cfg.eval.size or cfg.views.size, flip_p=cfg.views.flip_p)
    for row in tuned["settings"]:
        d = row["draws"][-1]  # the last: a copy tuned by an earlier draw would not give this
        idx, _ = stratified_subset(train.labels, d["seed"], per_class=row["per_class"])
        direct = finetune(load_encoder(run, cfg, 1), train.subset(idx), test, mean, std, fcfg)
        assert d["top1"] == pytest.approx(direct["top1"], abs=1e-9) and d["labels"] == len(idx)
        accs = [d["top1"] for d in row["draws"]]
        assert row["mean"] == pytest.approx(sum(accs) / 2)


@pytest.mark.parametrize("setting, key", [("eval.fewshot.per_class=[0]", "eval.fewshot.per_class"),
                                          ("eval.fewshot.fractions=[1.5]", "eval.fewshot.fractions"),
                                          ("eval.fewshot.draws=0", "eval.fewshot.draws")])
def test_bad_fewshot_settings_are_refused_by_key(setting, key, capsys):
    assert main(["config", setting]) == 2
    assert key in capsys.readouterr().err
