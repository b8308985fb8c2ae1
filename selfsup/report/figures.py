"""The report's pictures, as PNG bytes: curves, health, the embedding map, retrievals and
attention maps (matplotlib's Agg canvas, no display; retrievals composed with Pillow)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from selfsup.eval.health import COLLAPSED_STD_RATIO

SAME, OTHER = (46, 160, 67), (214, 39, 40)  # green: neighbour of the query's class; red: another


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def curves(runs: dict[str, dict[str, list[dict]]]) -> bytes:
    """Loss and learning rate against step, online k-NN against step and against training
    time: one line per run ({label: rows by kind from metrics.jsonl})."""
    fig = _figure(10, 6.4)
    axes = fig.subplots(2, 2)
    panels = [(axes[0, 0], "train", "step", "loss", "training loss"),
              (axes[0, 1], "train", "step", "lr", "learning rate"),
              (axes[1, 0], "knn", "step", "top1", "online k-NN top-1 (%)"),
              (axes[1, 1], "knn", "train_time_s", "top1", "online k-NN top-1 (%)")]
    for ax, kind, x, y, title in panels:
        for label, rows in runs.items():
            pts = [(r[x], r[y]) for r in rows.get(kind, []) if r.get(x) is not None and r.get(y) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if kind == "knn" else None, markersize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training time (s)" if x == "train_time_s" else "step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines and len(runs) > 1:
            ax.legend(fontsize=7)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.tight_layout()
    return png(fig)


def health(runs: dict[str, list[dict]]) -> bytes:
    """Normalised embedding std and effective rank at each online evaluation, per run."""
    fig = _figure(10, 3.2)
    ax_std, ax_rank = fig.subplots(1, 2)
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        ax_std.plot(steps, [r["std_ratio"] for r in rows], marker="o", markersize=3, label=label)
        ax_rank.plot(steps, [r["erank"] for r in rows], marker="o", markersize=3, label=label)
    ax_std.axhline(COLLAPSED_STD_RATIO, color="tab:red", linestyle=":", linewidth=1)
    ax_std.set_title("embedding std x sqrt(D) (1: fully spread, 0: collapsed)", fontsize=9)
    ax_rank.set_title("effective rank of the test features", fontsize=9)
    for ax in (ax_std, ax_rank):
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def embedding_map(xy: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> bytes:
    """The 2-D map coloured by class, with a legend."""
    fig = _figure(7.5, 5.6)
    ax = fig.add_subplot()
    cmap = _colours(len(classes))
    for k, name in enumerate(classes):
        pts = xy[labels == k]
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=7, color=cmap[k], label=name, alpha=0.8, linewidths=0)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return png(fig)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(k if n <= 20 else k / max(1, n - 1)) for k in range(n)]


def _rgb(images: Tensor, scale: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, H*scale, W*scale, 3] (grey shown as RGB)."""
    x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def retrievals(queries: Tensor, neighbours: Tensor, same: Tensor) -> bytes:
    """One row per query: the query, a gap, then its neighbours framed green (same class) or
    red (another class). Small images are enlarged (nearest) to about 64 px."""
    q, k = neighbours.shape[:2]
    h, w = queries.shape[-2:]
    scale = max(1, 64 // max(h, w))
    cell, border, gap = (h * scale, w * scale), 3, 12
    H, W = cell[0] + 2 * border, cell[1] + 2 * border
    canvas = np.full((q * (H + 4) + 4, (k + 1) * (W + 4) + gap + 4, 3), 255, np.uint8)
    qs, ns = _rgb(queries, scale), _rgb(neighbours.flatten(0, 1), scale).reshape(q, k, *cell, 3)
    for i in range(q):
        top = 4 + i * (H + 4)
        canvas[top + border:top + border + cell[0], 4 + border:4 + border + cell[1]] = qs[i]
        for j in range(k):
            left = 4 + (j + 1) * (W + 4) + gap
            canvas[top:top + H, left:left + W] = SAME if same[i, j] else OTHER
            canvas[top + border:top + border + cell[0], left + border:left + border + cell[1]] = ns[i, j]
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def attention(images: Tensor, maps: Tensor) -> bytes:
    """Each image above its last-block attention map, overlaid and upsampled to the image."""
    n = len(images)
    fig = _figure(1.6 * n, 3.4)
    axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
    rgb = _rgb(images, 1)
    for j in range(n):
        up = torch.nn.functional.interpolate(maps[j][None, None], size=images.shape[-2:], mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        axes[0, j].imshow(rgb[j], interpolation="nearest")
        axes[1, j].imshow(rgb[j], interpolation="nearest")
        axes[1, j].imshow(up, cmap="inferno", alpha=0.6, interpolation="bilinear")
        for ax in axes[:, j]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return png(fig)
