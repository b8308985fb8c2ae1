"""Streaming shards against the in-memory path, on the same JPEG images: decode images/s per
worker, then end-to-end images/s from shards to the method's views on the training device.

    python benchmarks/bench_stream.py                         # 64 and 224 px, Flickr8k-1k photos
    python benchmarks/bench_stream.py --sizes 224 --passes 5 --workers 0,1,2,4

The photos (../shared/data/flickr8k-1k.tar.gz, about 200x150 JPEGs) are written once as JPEG
shards at each size (`selfsup shards --image-size S --format jpg`, quality 90) into --work. Then:

1. decode, one process: images/s of BatchTasks decoding whole images (the evaluation's path) and
   random-resized crops of 25-100 % of the area (data.decode_crop=[0.25, 1]), per worker.
2. end to end: images/s of uint8 batches of --batch reaching the device and made into SimCLR's two
   views (`quick_cifar10`'s view settings at the batch's size), from memory (the images decoded
   once into one tensor, batches gathered by index: the default path) and streamed with 0, 1, 2
   ... decoding worker processes (--passes epochs through one loader, so that the workers'
   start counts once, as in a long epoch). The ratio column is against the
   mean of memory measured first and last.

Run it alone on the machine: decoding workers and the views share its cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.config import load_config, view_configs
from selfsup.data.shards import ShardSplit, write_shards
from selfsup.data.stream import BatchTasks, epoch_batches, load_batches, open_shards
from selfsup.views import build_view_set

DATA = Path(os.environ.get("SELFSUP_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shards_at(size: int, work: Path) -> Path:
    out = work / f"flickr8k-1k-{size}px-jpg"
    if not (out / "manifest.json").exists():
        write_shards(str(DATA / "flickr8k-1k.tar.gz"), out, splits=("train",), per_shard=100, image_size=size,
                     image_format_name="jpg", quality=90, progress=False)
    return out


def rate(fn, images: int, passes: int) -> float:
    fn()  # warm-up: allocator, oneDNN caches, page cache
    start = time.perf_counter()
    for _ in range(passes):
        fn()
    return images * passes / (time.perf_counter() - start)


def decode_rates(split: ShardSplit, size: int, passes: int) -> dict[str, float]:
    ids = np.arange(len(split))[None]
    out = {}
    for name, scale in (("whole image", None), ("random-resized crop 25-100 %", (0.25, 1.0))):
        tasks = BatchTasks(split, ids, size, split.channels, scale)
        out[name] = rate(lambda t=tasks: t[0], len(split), passes)
    return out


def end_to_end(split: ShardSplit, size: int, workers: list[int], passes: int, batch: int) -> dict[str, float]:
    cfg = load_config("quick_cifar10", [f"views.size={min(size, 224)}"])
    views = build_view_set(view_configs(cfg), split.mean, split.std)
    g = torch.Generator()
    memory = torch.cat(list(open_shards(split.folder, "train", size).images.chunks(256)))
    steps = len(split) // batch

    def from_memory():
        for e in range(passes):
            perm = torch.randperm(len(memory), generator=torch.Generator().manual_seed(e))
            for i in range(steps):
                with torch.no_grad():
                    views(memory[perm[i * batch:(i + 1) * batch]], g.manual_seed(i))

    out = {"memory (one uint8 tensor, gathered by index)": rate(from_memory, steps * batch * passes, 1)}
    for w in workers:
        # `passes` epochs' batches through one loader, as a long epoch would go: the workers'
        # start is paid once, not once per 1,000 images.
        plan = np.concatenate([epoch_batches(split.counts, 0, e, 0, 1, max(1, w), 100, batch) for e in range(passes)])

        def streamed(w=w, plan=plan):
            for i, (x, _) in enumerate(load_batches(BatchTasks(split, plan, size, split.channels), 0, w)):
                with torch.no_grad():
                    views(x, g.manual_seed(i))
        out[f"shards, {w} worker(s)"] = rate(streamed, len(plan) * batch, 1)
    # Again at the end: the spread of the two memory rows is the machine's noise.
    out["memory, again"] = rate(from_memory, steps * batch * passes, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--work", default="/tmp/selfsup-bench-stream")
    args = ap.parse_args()
    if not (DATA / "flickr8k-1k.tar.gz").exists():
        raise SystemExit(f"needs {DATA / 'flickr8k-1k.tar.gz'} (set SELFSUP_DATA)")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"Pillow {__import__('PIL').__version__}")
    workers = [int(w) for w in args.workers.split(",")]
    for size in (int(s) for s in args.sizes.split(",")):
        split = ShardSplit(shards_at(size, Path(args.work)), "train")
        mib = sum(f.stat().st_size for f in split.files) / 2**20
        print(f"\n## {size} px: {len(split)} JPEG images in {len(split.files)} shards, {mib:.1f} MiB")
        print("\n| decode, one process | images/s |\n| --- | --- |")
        for name, r in decode_rates(split, size, args.passes).items():
            print(f"| {name} | {r:,.0f} |")
        rows = end_to_end(split, size, workers, args.passes, args.batch)
        base = (rows["memory (one uint8 tensor, gathered by index)"] + rows["memory, again"]) / 2
        print("\n| to SimCLR's two views | images/s | x memory (mean of its two rows) |\n| --- | --- | --- |")
        for name, r in rows.items():
            print(f"| {name} | {r:,.0f} | {r / base:.2f} |")


if __name__ == "__main__":
    main()
