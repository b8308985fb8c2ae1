"""The report page: one self-contained HTML file (pictures inlined as PNG data, styles inline, no
script, nothing fetched), for one run or for a comparison of several. Everything is drawn at
report time from the run folder's files, so an old run gets a report too; what a run folder
lacks is said, not hidden."""

from __future__ import annotations

import base64
import html
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from selfsup.config import Config
from selfsup.eval.health import verdict
from selfsup.report import figures
from selfsup.runfolder import RunFolder

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1080px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .6rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.sub { color: #555; margin: 0 0 1rem; } .note { color: #555; font-size: .9rem; }
table { border-collapse: collapse; margin: .4rem 0; font-size: .92rem; }
td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; margin: .4rem 0; }
pre { background: #f5f5f7; padding: .8rem; overflow-x: auto; font-size: .8rem; }
.warn { background: #fdecea; border-left: 4px solid #d62728; padding: .5rem .8rem; }
.ok { background: #edf7ee; border-left: 4px solid #2e7d32; padding: .5rem .8rem; }
.same { color: #2e7d32; font-weight: 600; } .other { color: #d62728; font-weight: 600; }
figure { margin: .6rem 0; } figcaption { font-size: .85rem; color: #555; }
@media print { body { max-width: none; padding: 0; } h2 { break-after: avoid; }
               img, figure, table { break-inside: avoid; } details { display: block; } }
"""


@dataclass
class RunFiles:
    """What a run folder holds, read once: config, metrics by kind, evaluation results."""

    run: RunFolder
    cfg: Config
    metrics: dict[str, list[dict]]
    results: dict[str, dict]  # file stem (eval_knn, eval_linear_random, ...) -> its JSON

    @property
    def name(self) -> str:
        return self.run.path.name


def read_run(path: Path) -> RunFiles:
    from selfsup.run import find_run_dir, load_run_config

    run = RunFolder(find_run_dir(path))
    cfg = load_run_config(run.path)
    metrics: dict[str, list[dict]] = {}
    if run.metrics.exists():
        for n, line in enumerate(run.metrics.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                metrics.setdefault(row["kind"], []).append(row)
            except (ValueError, KeyError, TypeError):
                print(f"selfsup: warning: {run.metrics}:{n} is not a metrics line; skipped", file=sys.stderr)
    results = {}
    for f in sorted(run.path.glob("eval_*.json")):
        try:
            results[f.stem] = json.loads(f.read_text())
        except ValueError:
            print(f"selfsup: warning: {f} is not a result file; left out", file=sys.stderr)
    return RunFiles(run, cfg, metrics, results)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(head: list[str] | None, rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (escape text before); `head` None: a table of name, value rows."""
    th = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else
                                    f"<th>{c}</th>" if head is None and i == 0 else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{th}{body}</table>"


def _summary(r: RunFiles) -> str:
    from selfsup.backbones import build_backbone

    cfg, start = r.cfg, (r.metrics.get("start") or [{}])[-1]
    done = (r.metrics.get("done") or [{}])[-1]
    train = r.metrics.get("train") or []
    ips = [row["images_per_s"] for row in train if row.get("images_per_s")]
    params = start.get("backbone_params")
    if params is None:
        try:
            params = sum(p.numel() for p in build_backbone(cfg.backbone, 3, cfg.views.size).parameters())
        except ValueError:
            params = None
    wall = done.get("train_time_s") or (train[-1]["train_time_s"] if train else None)
    rows = [
        ["data", f"{html.escape(cfg.data.name)} ({html.escape(cfg.data.train_split)}"
                 + (f", {start['train_images']:,} images" if start.get("train_images") else "") + ")"],
        ["method", html.escape(cfg.method.name)],
        ["backbone", f"{html.escape(cfg.backbone.name)}" + (f", {params / 1e6:.2f} M parameters" if params else "")],
        ["budget", f"{cfg.trainer.epochs:g} epochs, batch {cfg.trainer.batch_size}, "
                   f"{(train[-1]['step'] if train else 0):,} steps logged"],
        ["hardware", html.escape(str(start.get("device", "not recorded (a run from before reports)")))
         + (f", {start['processes']} process(es)" if start.get("processes") else "")],
        ["precision", html.escape(str(start.get("precision", cfg.trainer.precision)))],
        ["training time", f"{wall / 60:.1f} min" if wall else "not logged"],
        ["throughput", f"{sum(ips) / len(ips):,.0f} images/s (mean of logged windows)" if ips else "not logged"],
    ]
    if done.get("knn_top1") is not None:
        rows.append(["final online k-NN", f"{done['knn_top1']:.2f} %"])
    from selfsup.config import to_yaml

    return (_table(None, rows) + "<details><summary>Resolved configuration</summary><pre>"
            + html.escape(to_yaml(cfg)) + "</pre></details>")


def _evaluations(r: RunFiles) -> str:
    from selfsup.eval.plots import layers_figure

    if not r.results:
        return ('<p class="note">No evaluation in this run folder yet: <code>selfsup eval knn,linear '
                f'{html.escape(str(r.run.path))}</code> adds one.</p>')
    rows, charts = [], []
    for stem, res in r.results.items():
        m = re.fullmatch(r"eval_(\w+?)(_random)?(_checkpoints)?", stem)
        protocol, random, track = (m.group(1), bool(m.group(2)), bool(m.group(3))) if m else (stem, False, False)
        if track:
            c = res.get("correlation", {})
            top = ", ".join(f"{p['step']}: {p['top1']:.1f} %" for p in res.get("points", []))
            rows.append([protocol, "every kept checkpoint", top or "-", html.escape(
                f"Pearson r {c.get('pearson')}, Spearman rho {c.get('spearman')}; {res.get('protocol', '')}")])
            continue
        top1, spread = res.get("top1"), res.get("top1_std")  # few-label: mean ± std over draws
        rows.append([protocol, "random init" if random else "trained",
                     (f"{top1:.2f}" + (f" ± {spread:.2f}" if isinstance(spread, (int, float)) else "") + " %")
                     if isinstance(top1, (int, float)) else "-",
                     html.escape(str(res.get("protocol", "")))])
        if res.get("layers"):
            label = "random init" if random else "trained"
            charts.append((protocol, label, res["layers"]))
    out = _table(["protocol", "weights", "top-1", "protocol in full"], rows, {2})
    for protocol in sorted({c[0] for c in charts}):
        curves = {label: layers for p, label, layers in charts if p == protocol}
        fig = layers_figure(curves, f"{protocol} top-1 by layer")
        out += f"<figure>{_img(figures.png(fig), protocol + ' by layer')}</figure>"
    return out


def _pictures(r: RunFiles) -> str:
    found: dict[str, list[tuple[int, Path]]] = {}
    for f in (r.run.path / "pictures").glob("*_step_*.png"):
        m = re.fullmatch(r"(.+)_step_(\d+)", f.stem)
        if m:
            found.setdefault(m.group(1), []).append((int(m.group(2)), f))
    if not found:
        return '<p class="note">This method draws no pictures of its work.</p>'
    out = []
    for name, shots in sorted(found.items()):
        out.append(f"<h3>{html.escape(name)}</h3>")
        for step, f in sorted(shots):
            out.append(f"<figure>{_img(f.read_bytes(), f'{name} at step {step}')}"
                       f"<figcaption>step {step:,}</figcaption></figure>")
    return "".join(out)


def _health(r: RunFiles, final: dict | None) -> str:
    rows = r.metrics.get("health") or []
    parts = []
    last = final or (rows[-1] if rows else None)
    if last is not None:
        cls = "warn" if last["collapsed"] else "ok"
        parts.append(f'<p class="{cls}">The representation is {html.escape(verdict(last))}.</p>')
    if rows:
        parts.append(_img(figures.health({r.name: rows}), "embedding health over training"))
    else:
        parts.append('<p class="note">No health points logged over training (it is logged at each '
                     'online k-NN point, trainer.knn_every).</p>')
    return "".join(parts)


def _analysis(r: RunFiles, progress: bool) -> tuple[str, dict | None]:
    """Retrievals, embedding map and attention: needs the encoder and the labelled data."""
    from selfsup.data import load_dataset
    from selfsup.device import resolve_device
    from selfsup.errors import SelfsupError
    from selfsup.report.analysis import analyse
    from selfsup.run import load_encoder

    cfg, d = r.cfg, r.cfg.data
    try:
        train = load_dataset(d.name, d.train_split, root=d.root, image_size=d.image_size)
        test = load_dataset(d.name, d.test_split, root=d.root, image_size=d.image_size) if d.test_split else None
        if train.labels is None or test is None or test.labels is None:
            raise ValueError("the data has no labelled train and test splits")
        encoder = load_encoder(r.run.path, cfg, train.images.shape[1])
    except (SelfsupError, OSError, ValueError) as e:
        return f'<p class="note">Not computed: {html.escape(str(e))}</p>', None
    mean, std = r.run.read_stats() or ([0.5], [0.25])
    device = resolve_device("auto")
    t = time.perf_counter()
    a = analyse(encoder.to(device), train, test, mean, std, cfg.eval.size or cfg.views.size, cfg.report,
                device, batch_size=cfg.eval.batch_size, seed=cfg.trainer.seed)
    if progress:
        print(f"report analysis of {r.name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    same = a.same.float().mean().item() * 100
    out = [f'<section id="retrievals"><h2>Nearest neighbours</h2><p>{len(a.queries)} test images (left) '
           f'and their {a.neighbours.shape[1]} nearest training images by cosine similarity of the '
           f'encoder\'s features, among {a.bank_size:,}. Frames: <span class="same">green</span>, the '
           f'query\'s class; <span class="other">red</span>, another. {same:.0f} % share the class.</p>',
           _img(figures.retrievals(a.queries, a.neighbours, a.same), "nearest-neighbour retrievals"),
           "</section>",
           f'<section id="embedding"><h2>Embedding map</h2><p>t-SNE of the L2-normalised features of '
           f'{len(a.map_xy):,} test images, a seeded class-stratified subset, coloured by class.</p>',
           _img(figures.embedding_map(a.map_xy, a.map_labels, a.classes), "embedding map"), "</section>"]
    if a.attention is not None:
        out += ['<section id="attention"><h2>Attention</h2><p>Where the last block attends, averaged over '
                'heads: the class token\'s attention to each patch, or with mean pooling the attention each '
                'patch receives.</p>', _img(figures.attention(*a.attention), "attention maps"), "</section>"]
    return "".join(out), a.health


def _page(title: str, body: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}<footer class=\"note\"><p>Written by "
            f"<code>selfsup report</code> on {stamp}.</p></footer></body></html>")


def run_page(r: RunFiles, analyse: bool = True, progress: bool = False) -> str:
    cfg = r.cfg
    analysis, final = _analysis(r, progress) if analyse else ("", None)
    body = [f"<header><h1>{html.escape(r.name)}</h1><p class=\"sub\">{html.escape(cfg.method.name)} · "
            f"{html.escape(cfg.backbone.name)} · {html.escape(cfg.data.name)}</p></header>",
            f'<section id="summary"><h2>What was trained</h2>{_summary(r)}</section>',
            f'<section id="curves"><h2>Curves</h2>{_img(figures.curves({r.name: r.metrics}), "curves")}</section>',
            f'<section id="evaluations"><h2>Evaluations</h2>{_evaluations(r)}</section>',
            f'<section id="health"><h2>Health</h2>{_health(r, final)}</section>',
            analysis,
            f'<section id="pictures"><h2>The method\'s pictures over training</h2>{_pictures(r)}</section>']
    return _page(f"{r.name}: selfsup report", "".join(body))


def compare_page(runs: list[RunFiles]) -> str:
    protocols = sorted({s for r in runs for s in r.results if not s.endswith("_checkpoints")})
    rows = []
    for r in runs:
        done = (r.metrics.get("done") or [{}])[-1]
        minutes = f"{done['train_time_s'] / 60:.1f} min" if done.get("train_time_s") else "-"
        knn = f"{done['knn_top1']:.2f} %" if done.get("knn_top1") is not None else "-"
        cells = [html.escape(r.name), html.escape(r.cfg.method.name), html.escape(r.cfg.backbone.name),
                 html.escape(r.cfg.data.name), minutes, knn]
        for p in protocols:
            top1 = r.results.get(p, {}).get("top1")
            cells.append(f"{top1:.2f} %" if isinstance(top1, (int, float)) else "-")
        rows.append(cells)
    head = ["run", "method", "backbone", "data", "training time", "online k-NN",
            *[p.removeprefix("eval_").replace("_random", " (random init)") for p in protocols]]
    health_rows = {r.name: r.metrics["health"] for r in runs if r.metrics.get("health")}
    curves = _img(figures.curves({r.name: r.metrics for r in runs}), "curves")
    health = (_img(figures.health(health_rows), "health") if health_rows
              else '<p class="note">No health points logged.</p>')
    body = [f"<header><h1>Comparison of {len(runs)} runs</h1></header>",
            f'<section id="results"><h2>Results</h2>{_table(head, rows, set(range(4, len(head))))}</section>',
            f'<section id="curves"><h2>Curves</h2>{curves}</section>',
            f'<section id="health"><h2>Health</h2>{health}</section>']
    return _page(f"selfsup comparison of {len(runs)} runs", "".join(body))


def write_report(paths: list[Path], out: Path | None = None, analyse: bool = True,
                 progress: bool = False) -> Path:
    """RUN/report.html for one run (or `out`); a comparison page for several (default
    ./comparison.html). Written under a temporary name and renamed."""
    runs = [read_run(Path(p)) for p in paths]
    if len(runs) == 1:
        text, out = run_page(runs[0], analyse, progress), Path(out) if out else runs[0].run.path / "report.html"
    else:
        text, out = compare_page(runs), Path(out) if out else Path("comparison.html")
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out

