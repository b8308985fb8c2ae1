"""Picture grids that a method shows of its work (MAE's reconstructions), as PNG files.

A method with `pictures(views) -> {name: rows}` returns rows of normalised images
[n, C, H, W], all of one size; the grid has one row per entry and one column per image, with a
2-pixel white border, pixels mapped back through the run's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def grid_image(rows: Sequence[Tensor], mean: Sequence[float], std: Sequence[float],
               pad: int = 2) -> np.ndarray:
    """rows: R tensors [n, C, H, W] (normalised) -> uint8 [R*(H+pad)+pad, n*(W+pad)+pad, 3]."""
    shapes = {tuple(r.shape) for r in rows}
    if len(shapes) != 1:
        raise ValueError(f"picture rows must share one shape, got {sorted(shapes)}")
    n, c, h, w = rows[0].shape
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        px = (row.detach().float().cpu() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
        px = px.expand(-1, 3, -1, -1) if c == 1 else px  # grayscale shown as RGB
        for j in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top:top + h, left:left + w] = px[j].permute(1, 2, 0).numpy()
    return out


def save_png(image: np.ndarray, path: Path, scale: int = 1) -> Path:
    """Write uint8 [H, W, 3] as PNG, enlarged `scale` times (nearest) so small images show;
    written to a temporary name first and renamed, like the checkpoints."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path
