"""Studies (selfsup/study.py): a YAML of runs and evaluations run to one table; killed at any
moment and started again, it loses nothing and gives the same table."""

import csv
import json
from pathlib import Path

import pytest
import yaml

import selfsup.api
from conftest import TINY
from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.study import STUDIES_DIR, _run_config, load_study, run_study
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer

SETTINGS = [*TINY, "trainer.precision=fp32", "trainer.epochs=0.6", "trainer.checkpoint_every_steps=4"]
STUDY = {
    "title": "a tiny study",
    "overrides": SETTINGS,
    "runs": [
        {"name": "all", "recipe": "quick", "tags": {"method": "SimCLR", "data": "100 %"}},
        {"name": "half", "recipe": "quick", "overrides": ["data.subset=600", "trainer.epochs=1.445"],
         "tags": {"method": "SimCLR", "data": "50 %"}},
        {"name": "random", "random_init": "all", "tags": {"method": "random init"}},
    ],
    "evaluations": [
        {"name": "knn", "protocol": "knn"},
        {"name": "few", "protocol": "fewshot",
         "overrides": ["eval.fewshot.per_class=[2,5]", "eval.fewshot.draws=2"]},
        {"name": "ft", "protocol": "finetune",
         "overrides": ["eval.finetune.epochs=1", "eval.finetune.train_subset=128", "eval.finetune.batch_size=64"]},
    ],
    "plot": {"x": "data", "series": "method"},
    "matrix": {"rows": "method", "columns": "data", "value": "knn"},
}


def write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def numbers(table: dict) -> list[dict]:
    """The table without its wall times."""
    return [{k: v for k, v in r.items() if k != "train min"} for r in table["rows"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    return run_study(write(d / "tiny.yaml", STUDY), d / "out", progress=False), d / "out"


def test_a_study_writes_one_table_of_every_run_and_evaluation(uninterrupted):
    table, out = uninterrupted
    assert [r["run"] for r in table["rows"]] == ["all", "half", "random"]
    assert table["columns"][:6] == ["run", "method", "data", "steps", "train min", "pretext"]
    assert {"knn", "few 20 labels", "few 50 labels", "ft"} <= set(table["columns"])
    # Constant steps across data sizes is the study file's business; what it trained is stated.
    all_, half, rand = table["rows"]
    assert all_["steps"] == half["steps"] > 0 and rand["steps"] == 0
    assert "loss" in all_["pretext"] and rand["pretext"] == ""
    for row in table["rows"]:  # the table's numbers are the evaluations' own results
        res = json.loads((out / "results" / f"{row['run']}.few.json").read_text())["result"]
        assert row["few 20 labels"] == res["settings"][0]["mean"]
        assert row["few 20 labels std"] == res["settings"][0]["std"]
    random_knn = json.loads((out / "runs" / "all" / "eval_knn_random.json").read_text())
    assert rand["knn"] == random_knn["top1"]
    md = (out / "table.md").read_text()
    assert "| run | method | data | steps |" in md and " ± " in md and "- knn: " in md
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["run"] for r in rows] == ["all", "half", "random"] and "few 20 labels std" in rows[0]
    assert json.loads((out / "table.json").read_text())["rows"] == table["rows"]
    assert (out / "plot.png").stat().st_size > 5000
    # the matrix: one cell per (method, data) pair that a run has; the random row lacks a data tag
    md = (out / "matrix.md").read_text().splitlines()
    assert md[2:] == ["| method \\ data | 100 % | 50 % |", "| --- | --- | --- |",
                      f"| SimCLR | {all_['knn']:.1f} | {half['knn']:.1f} |"]
    assert (out / "matrix.png").stat().st_size > 3000


def test_killed_mid_run_and_started_again_it_gives_the_same_table(uninterrupted, tmp_path, monkeypatch):
    """Killed in the second run, after its first checkpoint: the first run and its folder are
    kept, the second resumes from its checkpoint, and the table equals the uninterrupted one."""
    saved = Trainer.save
    seen = []

    def save_then_die(self):
        saved(self)
        seen.append(self.run.path.name)
        if self.run.path.name == "half" and seen.count("half") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_die)
    path = write(tmp_path / "tiny.yaml", STUDY)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "table.md").exists()
    monkeypatch.setattr(Trainer, "save", saved)
    table = run_study(path, tmp_path / "out", progress=False)
    assert numbers(table) == numbers(uninterrupted[0])
    runs = tmp_path / "out" / "runs"
    assert len(read_metrics(runs / "all", "start")) == 1  # trained once
    assert len(read_metrics(runs / "half", "start")) == 2  # started, then resumed
    assert read_metrics(runs / "half", "start")[1]["step"] == 4

    # A setting added to selfsup after a run was trained (here data.shuffle_buffer, taken out of
    # its config) counts as its default, not as a difference.
    config = runs / "all" / "config.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "shuffle_buffer" not in line))
    assert "shuffle_buffer" not in config.read_text() and "workers" in config.read_text()

    # Started a third time, nothing is trained or evaluated again.
    def refuse(*a, **k):
        raise AssertionError("nothing should run")

    monkeypatch.setattr(selfsup.api, "pretrain", refuse)
    monkeypatch.setattr(selfsup.api, "evaluate", refuse)
    assert numbers(run_study(path, tmp_path / "out", progress=False)) == numbers(table)


def test_an_evaluation_edited_is_evaluated_again_and_a_run_edited_is_refused(uninterrupted, tmp_path, capsys):
    _, out = uninterrupted
    study = json.loads(json.dumps(STUDY))
    study["evaluations"][0]["overrides"] = ["eval.knn.k=5"]
    calls = []
    real = selfsup.api.evaluate

    def counting(run, protocol, *a, **k):
        calls.append((Path(run).name, protocol, k.get("random_init")))
        return real(run, protocol, *a, **k)

    selfsup.api.evaluate, keep = counting, selfsup.api.evaluate
    try:
        table = run_study(write(tmp_path / "tiny.yaml", study), out, progress=False)
    finally:
        selfsup.api.evaluate = keep
    assert sorted(calls) == [("all", "knn", False), ("all", "knn", True), ("half", "knn", False)]
    assert "eval.knn.k=5" in "".join(json.loads((out / "results" / "all.knn.json").read_text())["settings"]["overrides"])
    assert table["rows"][0]["ft"] == uninterrupted[0]["rows"][0]["ft"]

    study["runs"][0]["overrides"] = ["trainer.lr=0.1"]
    capsys.readouterr()
    assert main(["study", str(write(tmp_path / "tiny.yaml", study)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs.all" in err[0] and "trainer.lr" in err[0] and "other settings" in err[0]


@pytest.mark.parametrize("change, words", [
    (lambda s: s["runs"][0].update(recipee="quick"), "recipee"),
    (lambda s: s["runs"][2].update(random_init="nope"), "runs.2.random_init='nope'"),
    (lambda s: s["runs"][1].update(name="all"), "runs.1.name='all' is used twice"),
    (lambda s: s["runs"][0].update(overrides=["trainer.epochs=-1"]), "runs.all: trainer.epochs"),
    (lambda s: s["evaluations"][0].update(protocol="knm"), "evaluations.0.protocol='knm'"),
    (lambda s: s["evaluations"][1].update(overrides=["eval.fewshot.draws=0"]), "evaluations.few on runs.all: eval.fewshot.draws"),
    (lambda s: s["plot"].update(x="dataset"), "plot.x='dataset'"),
    (lambda s: s["matrix"].update(columns="size"), "matrix.columns='size'"),
    (lambda s: s["matrix"].update(value="linear"), "matrix.value='linear' is not an evaluation"),
    (lambda s: s["runs"][0].pop("recipe"), "give either recipe"),
])
def test_a_bad_study_file_is_refused_in_one_line_before_anything_runs(tmp_path, capsys, change, words):
    study = json.loads(json.dumps(STUDY))
    change(study)
    path = write(tmp_path / "bad.yaml", study)
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and words in err[0], err
    assert not (tmp_path / "out" / "runs").exists()


def test_not_yaml_and_no_such_study(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("runs: [\n")
    assert main(["study", str(tmp_path / "x.yaml")]) == 2
    assert main(["study", "no_such_study"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "x.yaml" in err[0] and "no study 'no_such_study'" in err[1]


def test_the_shipped_studies_are_valid(capsys):
    shipped = sorted(STUDIES_DIR.glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"target_data_cpu", "target_data_gpu", "methods_cpu", "methods_gpu",
                                         "tokenizers_cpu", "augmentations_cpu"}
    for path in shipped:
        study = load_study(path)
        for r in study.runs:
            if r.recipe is not None:
                try:
                    _run_config(study, r, path)
                except ConfigError as e:
                    pytest.fail(str(e))
    main(["recipes"])
    assert "target_data_cpu" in capsys.readouterr().out
