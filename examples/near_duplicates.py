"""Embed a folder of images with a trained encoder and list its nearest pairs: near-duplicates.

    python examples/near_duplicates.py RUN FOLDER [--top 20]

Plain PyTorch on top of `selfsup.load`: cosine similarity between every pair of embeddings, the
most similar pairs first. Images are read with Pillow; any size or mode.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import selfsup

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a selfsup run folder")
    ap.add_argument("folder", help="a folder of images (searched recursively)")
    ap.add_argument("--top", type=int, default=20, help="how many pairs to list")
    args = ap.parse_args()

    files = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in EXTENSIONS)
    if len(files) < 2:
        raise SystemExit(f"{args.folder}: fewer than two images")
    enc = selfsup.load(args.run)
    z = []
    for i in range(0, len(files), 256):  # a chunk at a time: a large folder never sits in memory
        pictures = []
        for f in files[i:i + 256]:
            with Image.open(f) as im:
                pictures.append(im.convert("RGB"))
        z.append(enc.embed(pictures))
    z = F.normalize(torch.cat(z), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-2)
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    scores = sim[upper]
    rows, cols = upper.nonzero(as_tuple=True)
    for s, k in zip(*scores.topk(min(args.top, len(scores)))):
        print(f"{s:.3f}  {files[rows[k]]}  {files[cols[k]]}")


if __name__ == "__main__":
    main()
