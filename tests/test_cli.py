"""The `selfsup` command end to end: pretrain, eval knn / linear, errors a user can act on."""

import json

from selfsup.cli import main

TINY = ["backbone.width=0.125", "views.size=16", "trainer.batch_size=64", "trainer.epochs=2",
        "trainer.progress=false", "trainer.knn_every=1", "method.proj_hidden=32", "method.proj_dim=16"]


def test_pretrain_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", "quick", "--run-dir", str(run), *TINY]) == 0
    knn_rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(l)["kind"] == "knn"]
    assert [r["epoch"] for r in knn_rows] == [1.0, 2.0]

    assert main(["eval", "knn", str(run), "eval.knn.k=10"]) == 0
    out = capsys.readouterr().out
    assert "knn top-1:" in out and "k=10" in out
    knn = json.loads((run / "eval_knn.json").read_text())
    assert knn["k"] == 10
    assert 30.0 < knn["top1"] <= 100.0  # digits: far above the 10 % of chance

    ckpt = next((run / "checkpoints").iterdir())
    assert main(["eval", "linear", str(ckpt), "eval.linear.epochs=20"]) == 0
    lin = json.loads((run / "eval_linear.json").read_text())
    assert 30.0 < lin["top1"] <= 100.0 and "protocol" in lin

    assert main(["eval", "knn", str(run), "eval.layer=layer2"]) == 0
    assert "layer2" in json.loads((run / "eval_knn.json").read_text())["protocol"]

    # Several protocols in one invocation share one feature extraction.
    (run / "eval_knn.json").unlink()
    assert main(["eval", "knn,linear", str(run), "eval.linear.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert "knn top-1:" in out and "linear top-1:" in out
    assert (run / "eval_knn.json").exists() and (run / "eval_linear.json").exists()
    assert main(["eval", "knn,lineer", str(run)]) == 2
    assert "lineer" in capsys.readouterr().err


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["pretrain", "--recipe", "quick", "trainer.epoch=1"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "quick", f"trainer.out={tmp_path}",
                 f"data.root={tmp_path}", "data.name=cifar100"]) == 2
    err = capsys.readouterr().err
    assert "cifar-100" in err.lower() and str(tmp_path) in err
    assert main(["eval", "knn", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_recipes_and_config(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quick_cifar10" in out and "cifar10_simclr" in out
    assert main(["config", "--recipe", "cifar10_simclr", "trainer.batch_size=128"]) == 0
    assert "batch_size: 128" in capsys.readouterr().out
