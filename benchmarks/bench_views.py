"""Throughput of selfsup.views against an equivalent kornia.augmentation pipeline.

    python benchmarks/bench_views.py [--threads 2] [--batch 512] [--sizes 32 96] [--reps 7]

Both pipelines make SimCLR's CIFAR-10 views (random resized crop, flip, colour jitter with
p=0.8, grayscale with p=0.2, normalisation) from the same uint8 batch, two views per call.
They run interleaved in one process, so machine load hits both alike; the table gives the
median over ``--reps`` timed calls, in view-images per second, and the ratio.
kornia is an optional benchmark-only dependency (``pip install selfsup[bench]``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from selfsup.views import ViewConfig, build_views

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def kornia_views(size: int, n_views: int, device: torch.device):
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    aug = torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
    ).to(device)

    def run(images: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        x = images.float() / 255  # kornia wants float input; part of the work
        return [aug(x) for _ in range(n_views)]

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict, images: torch.Tensor, reps: int, device: torch.device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    for fn in fns.values():  # warm-up: allocator, lazy init, kernel caches
        fn(images, g)
        fn(images, g)
    times = {name: [] for name in fns}
    for _ in range(reps):  # interleaved so that load spikes hit every pipeline
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn(images, g)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_views = 2

    # other busy processes skew CPU timings (2 threads suffer most): the load says if they did
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
          f"views/call={n_views} torch={torch.__version__} load={os.getloadavg()[0]:.2f}")
    print(f"{'size':>5} {'pipeline':<10} {'ms/call':>9} {'view-img/s':>11} {'vs kornia':>10}")
    for size in args.sizes:
        images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8,
                               device=device)
        fns = {"selfsup": build_views(ViewConfig(n_views=n_views, size=size), MEAN, STD)}
        k = kornia_views(size, n_views, device)
        if k is not None:
            fns["kornia"] = k
        med = time_calls(fns, images, args.reps, device)
        for name, t in med.items():
            ratio = f"{med['kornia'] / t:.2f}x" if "kornia" in med else "n/a"
            print(f"{size:>5} {name:<10} {t * 1e3:>9.1f} {args.batch * n_views / t:>11.0f} "
                  f"{ratio:>10}")
    print(f"load at the end: {os.getloadavg()[0]:.2f}")
    if "kornia" not in fns:
        print("kornia not installed: pip install 'selfsup[bench]' for the comparison")


if __name__ == "__main__":
    main()
