"""Studies: a YAML of pretraining runs and evaluations, run to completion and gathered into one
table (Markdown, CSV, JSON) and a plot.

    selfsup study target_data_cpu              # a shipped study (selfsup/studies/*.yaml)
    selfsup study my_study.yaml --out studies/mine

A study file:

    title: Pretraining on the target data
    overrides: [data.name=cifar10]       # applied to every run, before the run's own
    runs:
      - name: simclr_1pct                # the row's name and its run folder's
        recipe: quick_cifar10
        overrides: [data.subset=500, trainer.epochs=390]
        tags: {method: SimCLR, data: 1 %}   # the table's leading columns
      - name: random_resnet
        random_init: simclr_1pct         # that run's network at the initialisation it started from
        tags: {method: random init}
    evaluations:
      - {name: linear, protocol: linear}
      - {name: fewshot, protocol: fewshot, overrides: [eval.fewshot.draws=3]}
      - {name: finetune, protocol: finetune, recipe: finetune_quick_cifar10}
    plot: {x: data, series: method}      # optional: top-1 against a tag, one line per another
    matrix: {rows: method, columns: data, value: linear}   # optional: one evaluation over two tags

The output folder (`--out`, default `studies/<file name>`) holds `runs/<name>/` (ordinary run
folders), `results/<row>.<evaluation>.json` (each evaluation's result with the settings that made
it), and `table.md`, `table.csv`, `table.json`, `plot.png` (and `matrix.md`, `matrix.png`).
Starting the study again does only what is missing: a finished run is kept, an interrupted one
is resumed from its last checkpoint (`selfsup pretrain --resume`), an evaluation whose result
was written with the same settings is read back; so a study can be killed at any moment and
started again with nothing lost. A run folder trained with other settings than the study now gives (the file was edited) is refused
with the keys that differ, never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from selfsup.config import (ConfigError, _as_dictconfig, _merge, _to_object, build_config, recipe_path,
                            shipped_or_path, to_yaml)

STUDIES_DIR = Path(__file__).parent / "studies"
FROZEN = ("knn", "linear", "fewshot")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A run's train-log entries that are the trainer's own, not the method's pretext metrics.
TRAINER_KEYS = {"kind", "step", "epoch", "lr", "images_per_s", "train_time_s"}


@dataclass
class RunSpec:
    """name: the row and its run folder. recipe + overrides: what `selfsup pretrain` trains.
    random_init: instead, the named run's network at its random initialisation (a baseline row).
    tags: leading columns of the table (e.g. method, data), and the plot's axes."""

    name: str = "???"
    recipe: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    random_init: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalSpec:
    """name: the column. protocol: knn | linear | fewshot | finetune. recipe + overrides: as
    `selfsup eval PROTOCOL RUN --recipe R key=value`."""

    name: str = "???"
    protocol: str = "???"
    recipe: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class PlotSpec:
    """x: a tag whose values are the x axis (in the order the runs give them); series: a tag,
    one line per value. Unset: a bar per row for each column."""

    x: Optional[str] = None
    series: Optional[str] = None


@dataclass
class MatrixSpec:
    """rows, columns: two tags; value: a column of the table (an evaluation's name). Gives
    matrix.md and matrix.png: the value of the run tagged (row, column) in each cell, empty where
    no run has that pair; axes in the order the runs first give the tags' values. E.g. SimCLR's
    figure 5: first and second augmentation, with the singles on the diagonal."""

    rows: Optional[str] = None
    columns: Optional[str] = None
    value: Optional[str] = None


@dataclass
class Study:
    title: str = ""
    overrides: list[str] = field(default_factory=list)
    runs: list[RunSpec] = field(default_factory=list)
    evaluations: list[EvalSpec] = field(default_factory=list)
    plot: PlotSpec = field(default_factory=PlotSpec)
    matrix: MatrixSpec = field(default_factory=MatrixSpec)


def study_path(study: str) -> Path:
    """A shipped study's name (target_data_cpu, ...) or a path to a YAML file."""
    return shipped_or_path(study, STUDIES_DIR, "study")


def load_study(path: Path) -> Study:
    """The study file, validated: every key known, names unique and usable as folder names, each
    run either trained or a random init of an earlier trained run, every protocol known."""
    raw = _as_dictconfig(path, f"study {path}")
    try:
        study = _to_object(_merge(Study, raw))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    where = f"{path}"
    if not study.runs:
        raise ConfigError(f"{where}: runs is empty: list the pretraining runs")
    if not study.evaluations:
        raise ConfigError(f"{where}: evaluations is empty: list at least one")
    trained: set[str] = set()
    for i, r in enumerate(study.runs):
        key = f"{where}: runs.{i}"
        if r.name == "???" or not NAME.fullmatch(r.name):
            raise ConfigError(f"{key}.name={r.name!r}: give a name of letters, digits, _ . -")
        if r.name in trained or any(r.name == s.name for s in study.runs[:i]):
            raise ConfigError(f"{key}.name={r.name!r} is used twice")
        if (r.recipe is None) == (r.random_init is None):
            raise ConfigError(f"{key} ({r.name}): give either recipe (a run to train) or random_init "
                              f"(the random initialisation of an earlier run)")
        if r.random_init is not None:
            if r.random_init not in trained:
                raise ConfigError(f"{key}.random_init={r.random_init!r} is not an earlier run with a recipe")
            if r.overrides:
                raise ConfigError(f"{key}.overrides: a random_init row takes its run's settings")
        else:
            trained.add(r.name)
    for i, e in enumerate(study.evaluations):
        key = f"{where}: evaluations.{i}"
        if e.name == "???" or not NAME.fullmatch(e.name):
            raise ConfigError(f"{key}.name={e.name!r}: give a name of letters, digits, _ . -")
        if any(e.name == s.name for s in study.evaluations[:i]):
            raise ConfigError(f"{key}.name={e.name!r} is used twice")
        if e.protocol not in (*FROZEN, "finetune"):
            raise ConfigError(f"{key}.protocol={e.protocol!r} is not one of {', '.join((*FROZEN, 'finetune'))}")
    tags = {t for r in study.runs for t in r.tags}
    for axis in ("x", "series"):
        value = getattr(study.plot, axis)
        if value is not None and value not in tags:
            raise ConfigError(f"{where}: plot.{axis}={value!r} is not a tag of any run ({', '.join(sorted(tags))})")
    m = study.matrix
    if any(v is not None for v in (m.rows, m.columns, m.value)):
        for axis in ("rows", "columns"):
            value = getattr(m, axis)
            if value not in tags:
                raise ConfigError(f"{where}: matrix.{axis}={value!r} is not a tag of any run "
                                  f"({', '.join(sorted(tags))})")
        if m.value not in [e.name for e in study.evaluations]:
            raise ConfigError(f"{where}: matrix.value={m.value!r} is not an evaluation's name "
                              f"({', '.join(e.name for e in study.evaluations)})")
    return study


def _run_config(study: Study, run: RunSpec, path: Path):
    try:
        return build_config(recipe_path(run.recipe), [*study.overrides, *run.overrides])
    except ConfigError as e:
        raise ConfigError(f"{path}: runs.{run.name}: {e}") from None


def _check_evaluations(study: Study, configs: dict, path: Path) -> None:
    """Each evaluation's settings over each run's config, refused now rather than after training."""
    for e in study.evaluations:
        for name, cfg in configs.items():
            try:
                build_config(OmegaConf.create(to_yaml(cfg)), *([recipe_path(e.recipe)] if e.recipe else []),
                             list(e.overrides))
            except ConfigError as err:
                raise ConfigError(f"{path}: evaluations.{e.name} on runs.{name}: {err}") from None


def _differences(a: Any, b: Any, key: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested containers."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))]
    return [] if a == b else [key]


def _done(run_dir: Path) -> dict | None:
    """The run's `done` entry (its last step and training time), or None if it has not finished."""
    from selfsup.train.runlog import read_metrics

    try:
        done = read_metrics(run_dir, "done")
    except (OSError, ValueError):
        return None
    return done[-1] if done and (run_dir / "encoder.safetensors").exists() else None


def _train(study: Study, run: RunSpec, cfg, run_dir: Path, path: Path, log) -> dict:
    """The run trained to its end (started, resumed or found finished); its `done` entry."""
    from selfsup.api import pretrain
    from selfsup.runfolder import RunFolder

    folder = RunFolder(run_dir)
    if folder.config.exists():
        # Read through the config classes, so that a setting added to selfsup since the run was
        # trained counts as its default rather than as a difference.
        had = OmegaConf.to_container(OmegaConf.create(to_yaml(build_config(folder.config, []))), resolve=True)
        want = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)), resolve=True)
        diff = _differences(want, had)
        if diff:
            raise ConfigError(f"{path}: runs.{run.name}: {run_dir} was trained with other settings "
                              f"({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''}); move that "
                              f"folder away or give the run another name")
        done = _done(run_dir)
        if done is not None:
            log(f"{run.name}: finished earlier (step {done['step']})")
            return done
        log(f"{run.name}: resuming {run_dir}")
        pretrain(resume=run_dir)
    else:
        log(f"{run.name}: training ({run.recipe} {' '.join([*study.overrides, *run.overrides])})")
        pretrain(run.recipe, *study.overrides, *run.overrides, run_dir=run_dir)
    return _done(run_dir)


def _result_path(out: Path, row: str, evaluation: str) -> Path:
    return out / "results" / f"{row}.{evaluation}.json"


def _write(path: Path, text: str) -> None:
    """Written to a temporary name and renamed: a killed study never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _evaluate(study: Study, row: RunSpec, run_dir: Path, done: dict, out: Path, log) -> dict:
    """{evaluation name: result} for one row: results already written with the same settings are
    read back; the frozen protocols still to do that share settings are evaluated in one
    invocation, from one feature extraction."""
    from selfsup.api import evaluate

    random_init = row.random_init is not None
    results, todo = {}, []
    for e in study.evaluations:
        key = {"protocol": e.protocol, "recipe": e.recipe, "overrides": list(e.overrides),
               "random_init": random_init, "run": run_dir.name, "run_step": done["step"]}
        p = _result_path(out, row.name, e.name)
        try:
            stored = json.loads(p.read_text()) if p.exists() else None
        except ValueError:
            stored = None  # a damaged result is evaluated again
        if stored and stored.get("settings") == key:
            results[e.name] = stored["result"]
        else:
            todo.append((e, key))
    groups: dict[tuple, list] = {}
    for e, key in todo:  # finetune alone (it changes the weights); frozen ones grouped
        group = (e.recipe, tuple(e.overrides)) + ((e.name,) if e.protocol == "finetune" else ())
        groups.setdefault(group, []).append((e, key))
    for items in groups.values():
        protocols = sorted({e.protocol for e, _ in items})
        e0 = items[0][0]
        log(f"{row.name}: {','.join(protocols)}" + (" (random init)" if random_init else ""))
        got = evaluate(run_dir, ",".join(protocols), *e0.overrides, recipe=e0.recipe, random_init=random_init)
        for e, key in items:
            results[e.name] = got[e.protocol]
            _write(_result_path(out, row.name, e.name),
                   json.dumps({"settings": key, "result": got[e.protocol]}, indent=2, default=str))
    return results


def _pretext(run_dir: Path) -> dict:
    """The method's own metrics at the last logged training step (loss, rot_acc, token_acc, ...),
    after what fitting to the data cost before training (a tokenizer's seconds, its curve)."""
    from selfsup.train.runlog import read_metrics

    out = {}
    for kind in ("fitted", "train"):
        logged = read_metrics(run_dir, kind)
        out.update({k: v for k, v in logged[-1].items() if k not in TRAINER_KEYS} if logged else {})
    return out


def run_study(study_file: str | Path, out: str | Path | None = None, progress: bool = True) -> dict:
    """Runs what is missing of a study, then writes its table and plot; returns the table
    (`table.json`'s content)."""
    path = study_path(str(study_file))
    study = load_study(path)
    out = Path(out) if out is not None else Path("studies") / path.stem
    configs = {r.name: _run_config(study, r, path) for r in study.runs if r.recipe is not None}
    _check_evaluations(study, configs, path)

    def log(msg: str) -> None:
        if progress:
            print(f"[study {path.stem}] {msg}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    _write(out / "study.yaml", path.read_text())
    done = {}
    for r in study.runs:
        if r.recipe is not None:
            done[r.name] = _train(study, r, configs[r.name], out / "runs" / r.name, path, log)
    rows = []
    for r in study.runs:
        source = r.random_init or r.name
        run_dir = out / "runs" / source
        state = {"step": 0, "train_time_s": 0.0} if r.random_init else done[r.name]
        results = _evaluate(study, r, run_dir, {"step": done[source]["step"]}, out, log)
        rows.append({"name": r.name, "tags": dict(r.tags), "steps": state["step"],
                     "train_min": state.get("train_time_s", 0.0) / 60,
                     "pretext": {} if r.random_init else _pretext(run_dir), "results": results})
    table = make_table(study, rows)
    for suffix, text in (("md", table_markdown(table)), ("csv", table_csv(table)),
                         ("json", json.dumps(table, indent=2, default=str))):
        _write(out / f"table.{suffix}", text)
    from selfsup.eval.plots import plot_study

    plot_study(table, study.plot.x, study.plot.series, out / "plot.png")
    log(f"written: {out / 'table.md'}, table.csv, table.json, plot.png")
    if progress:
        print(table_markdown(table))
    if study.matrix.value is not None:
        from selfsup.eval.plots import plot_matrix

        matrix = make_matrix(table, study.matrix)
        _write(out / "matrix.md", matrix_markdown(matrix))
        plot_matrix(matrix, out / "matrix.png")
        log(f"written: {out / 'matrix.md'}, matrix.png")
        if progress:
            print(matrix_markdown(matrix))
    return table


def make_matrix(table: dict, spec: MatrixSpec) -> dict:
    """{"title", "rows", "columns", "value", "cells"}: cells[i][j] is `spec.value` of the row whose
    tags are (rows[i], columns[j]), or None."""
    rows = [r for r in table["rows"] if r.get(spec.rows) and r.get(spec.columns)]  # runs with both tags
    labels = {axis: list(dict.fromkeys(r[getattr(spec, axis)] for r in rows)) for axis in ("rows", "columns")}
    at = {(r.get(spec.rows), r.get(spec.columns)): r.get(spec.value) for r in rows}
    return {"title": table["title"], "rows": labels["rows"], "columns": labels["columns"],
            "axes": [spec.rows, spec.columns], "value": spec.value,
            "cells": [[at.get((a, b)) for b in labels["columns"]] for a in labels["rows"]]}


def matrix_markdown(matrix: dict) -> str:
    rows_tag, cols_tag = matrix["axes"]
    lines = [f"## {matrix['title']}: {matrix['value']}", ""] if matrix["title"] else []
    lines += [f"| {rows_tag} \\ {cols_tag} | " + " | ".join(matrix["columns"]) + " |",
              "|" + " --- |" * (len(matrix["columns"]) + 1)]
    for label, cells in zip(matrix["rows"], matrix["cells"]):
        lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.1f}" for v in cells) + " |")
    return "\n".join([*lines, ""])


def _cells(e: EvalSpec, result: dict) -> list[tuple[str, Any, Any]]:
    """(column, top-1, std or None) of one evaluation's result: one per few-label setting."""
    if "settings" in result:
        tuned = (result.get("finetune") or {}).get("settings", [])
        return ([(f"{e.name} {s['labels']} labels", s["mean"], s["std"]) for s in result["settings"]]
                + [(f"{e.name} fine-tuned {s['labels']} labels", s["mean"], s["std"]) for s in tuned])
    return [(e.name, result["top1"], None)]


def make_table(study: Study, rows: list[dict]) -> dict:
    """{"title", "columns": [...], "rows": [{column: value}], "protocols": {evaluation: line}}:
    tags, steps, training minutes and pretext metrics, then each evaluation's top-1 (few-label
    settings as "<name> <labels> labels" with a "<column> std")."""
    tags = list(dict.fromkeys(t for r in study.runs for t in r.tags))
    columns = ["run", *tags, "steps", "train min", "pretext"]
    out_rows, protocols = [], {}
    for row in rows:
        cells = {"run": row["name"], **{t: row["tags"].get(t, "") for t in tags},
                 "steps": row["steps"], "train min": round(row["train_min"], 2),
                 "pretext": ", ".join(f"{k} {v:.4g}" for k, v in row["pretext"].items()
                                      if isinstance(v, (int, float)))}
        for e in study.evaluations:
            res = row["results"][e.name]
            protocols.setdefault(e.name, res.get("protocol", ""))
            for col, top1, std in _cells(e, res):
                if col not in columns:
                    columns.append(col)
                cells[col] = top1
                if std is not None:
                    cells[f"{col} std"] = std
            if "best_layer" in res:
                cells[f"{e.name} layer"] = res["best_layer"]
        out_rows.append(cells)
    return {"title": study.title, "columns": columns, "rows": out_rows, "protocols": protocols}


def _fmt(row: dict, col: str) -> str:
    v = row.get(col, "")
    if isinstance(v, float) and col not in ("train min",):
        std = row.get(f"{col} std")
        return f"{v:.2f} ± {std:.2f} %" if std is not None else f"{v:.2f} %"
    return str(v)


def table_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = [f"## {table['title']}", ""] if table["title"] else []
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r, c) for c in cols) + " |" for r in table["rows"]]
    lines += ["", *[f"- {name}: {line}" for name, line in table["protocols"].items()], ""]
    return "\n".join(lines)


def table_csv(table: dict) -> str:
    cols = [c for c in table["columns"]]
    extra = sorted({k for r in table["rows"] for k in r if k not in cols})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*cols, *extra], lineterminator="\n")
    w.writeheader()
    for r in table["rows"]:
        w.writerow({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})
    return buf.getvalue()
