"""Plots of evaluation results, written as PNG files (matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_layers(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    """`layers_figure` written to a temporary name and renamed, like every file of a run folder."""
    return _save(layers_figure(curves, title), path)


def layers_figure(curves: dict[str, list[dict]], title: str):
    """Top-1 against depth: one line per entry of `curves` ({label: the "layers" rows of an
    every-layer result, each with "layer", "depth", "top1"}); labels ending in "random init"
    are dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=120)
    ax = fig.add_subplot()
    names: list[str] = []
    for label, rows in curves.items():
        depth = [r["depth"] for r in rows]
        ax.plot(depth, [r["top1"] for r in rows], marker="o", markersize=3, label=label,
                linestyle="--" if label.endswith("random init") else "-")
        if len(rows) > len(names):
            names = [r["layer"] for r in rows]
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_track(points: list[dict], path: Path, title: str, ylabel: str) -> Path:
    """Top-1 against the held-out pretraining loss, one point per checkpoint (`points`: rows with
    "step", "loss" and "top1"), joined in training order and labelled with their steps: iGPT's
    fig. 3. Written like `plot_layers`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=120)
    ax = fig.add_subplot()
    x, y = [p["loss"] for p in points], [p["top1"] for p in points]
    ax.plot(x, y, color="0.7", linewidth=1, zorder=1)
    ax.scatter(x, y, c=range(len(points)), cmap="viridis", s=28, zorder=2)
    for i, p in enumerate(points):  # labels above and below in turn: late points crowd together
        ax.annotate(f"{p['step']}", (p["loss"], p["top1"]), textcoords="offset points",
                    xytext=(4, 4 if i % 2 else -10), fontsize=7)
    ax.set_xlabel("held-out pretraining loss (nats; lower is better)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_study(table: dict, x: str | None, series: str | None, path: Path) -> Path:
    """A study's top-1 columns (selfsup/study.py), one panel each. With `x` (a tag): top-1 against
    that tag's values, one line per value of `series`; rows without an `x` value (a random-init
    row) are dashed horizontal lines. Without: a bar per row. Written like `plot_layers`."""
    from matplotlib.figure import Figure

    rows = table["rows"]
    columns = [c for c in table["columns"] if any(isinstance(r.get(c), float) for r in rows)
               and c != "train min"]
    n = max(1, len(columns))
    wide = min(4, n)
    fig = Figure(figsize=(3.6 * wide, 3.2 * ((n + wide - 1) // wide)), dpi=110)
    for i, col in enumerate(columns):
        ax = fig.add_subplot((n + wide - 1) // wide, wide, i + 1)
        if x:
            xs = list(dict.fromkeys(r[x] for r in rows if r.get(x)))
            lines = dict.fromkeys(r.get(series, "") if series else "" for r in rows)
            for j, name in enumerate(lines):
                mine = [r for r in rows if (r.get(series, "") if series else "") == name and col in r]
                at = [r for r in mine if r.get(x)]
                color = f"C{j}"
                if at:
                    ax.errorbar([xs.index(r[x]) for r in at], [r[col] for r in at],
                                yerr=[r.get(f"{col} std", 0.0) for r in at], marker="o", markersize=4,
                                capsize=2, label=name or None, color=color)
                for r in mine:
                    if not r.get(x):
                        ax.axhline(r[col], linestyle="--", color=color, label=name or r["run"])
            ax.set_xticks(range(len(xs)), xs, fontsize=8)
            ax.set_xlabel(x, fontsize=8)
        else:
            have = [r for r in rows if col in r]
            ax.bar(range(len(have)), [r[col] for r in have],
                   yerr=[r.get(f"{col} std", 0.0) for r in have], color="C0", capsize=2)
            ax.set_xticks(range(len(have)), [r["run"] for r in have], rotation=60, fontsize=7)
        ax.set_title(col, fontsize=9)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0 and x:
            ax.legend(fontsize=7)
    if table.get("title"):
        fig.suptitle(table["title"], fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_matrix(matrix: dict, path: Path) -> Path:
    """A study's matrix (`selfsup.study.make_matrix`) as a heat map with the values written in;
    empty cells stay blank."""
    import numpy as np
    from matplotlib.figure import Figure

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix["cells"]], dtype=float)
    h, w = values.shape
    fig = Figure(figsize=(1.0 + 0.8 * w, 0.8 + 0.6 * h), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    for i in range(h):
        for j in range(w):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(w), matrix["columns"], rotation=45, fontsize=8)
    ax.set_yticks(range(h), matrix["rows"], fontsize=8)
    ax.set_xlabel(matrix["axes"][1], fontsize=8)
    ax.set_ylabel(matrix["axes"][0], fontsize=8)
    ax.set_title(f"{matrix['value']} top-1 (%)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """PNG to a temporary name, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
