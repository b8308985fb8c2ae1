"""The quick CIFAR-10 recipe on this machine: throughput, augmentation share, k-NN vs wall-clock.

    python benchmarks/quick_cifar10.py                      # 15-minute training budget
    python benchmarks/quick_cifar10.py --minutes 3 --knn-every 1
    python benchmarks/quick_cifar10.py --recipe cifar10_simclr --minutes 10 trainer.device=cuda

1. Times `--steps` training steps and the same number of augmentation-only calls, and prints
   images/s and the share of step time spent making views.
2. Sizes the run to the budget (epochs = budget x measured images/s / training-set size, unless
   trainer.epochs is overridden), trains with online k-NN every `--knn-every` epochs, and prints
   k-NN top-1 (k=200, T=0.1 unless the recipe says otherwise) against training wall-clock time,
   which excludes the time spent evaluating.

Needs CIFAR-10 in $SELFSUP_DATA (or ../shared/data beside the project).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer, step_seed


def measure(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(images/s of full training steps, seconds per augmentation call / seconds per step)."""
    x = trainer.images[: trainer.local_batch].to(trainer.device)
    g = torch.Generator(device=trainer.device)

    def sync():
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    def aug_only(i):
        with torch.no_grad():
            return trainer.views(x, g.manual_seed(step_seed(0, 0, i)))

    def full_step(i):
        trainer.train_step(x, step_seed(0, 0, i))

    timings = {}
    for name, fn in (("step", full_step), ("aug", aug_only)):
        for i in range(3):  # warm-up: allocator, oneDNN primitive caches, compile
            fn(i)
        sync()
        start = time.perf_counter()
        for i in range(steps):
            fn(i)
        sync()
        timings[name] = (time.perf_counter() - start) / steps
    return trainer.cfg.trainer.batch_size / timings["step"], timings["aug"] / timings["step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="quick_cifar10")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--knn-every", type=int, default=2, help="epochs between k-NN evaluations")
    ap.add_argument("--steps", type=int, default=10, help="timed steps for the throughput figures")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("SELFSUP_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    base = [f"trainer.out={args.out}", f"trainer.knn_every={args.knn_every}", "trainer.progress=false"]
    probe = Trainer(load_config(args.recipe, [*base, *args.overrides]), run_dir=Path(args.out) / "probe")
    ips, aug_share = measure(probe, args.steps)
    n = len(probe.train_set)
    del probe

    overrides = list(args.overrides)
    if not any(o.startswith("trainer.epochs=") for o in overrides):
        overrides.append(f"trainer.epochs={max(1, int(args.minutes * 60 * ips / n))}")
    cfg = load_config(args.recipe, [*base, *overrides])
    trainer = Trainer(cfg, run_dir=Path(args.out) / f"{args.recipe}-{int(time.time())}")
    wall = time.perf_counter()
    run = trainer.fit()
    wall = time.perf_counter() - wall

    dev = trainer.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"\nrecipe {args.recipe} on {name}; backbone {cfg.backbone.name} x{cfg.backbone.width}, "
          f"batch {cfg.trainer.batch_size}, views {cfg.views.size}px, precision "
          f"{'bf16' if trainer.amp_dtype else 'fp32'}, {cfg.trainer.epochs} epochs of {n} images")
    print("\n| measure | value |\n| --- | --- |")
    print(f"| training images/s (2 views each) | {ips:.0f} |")
    print(f"| share of step time in augmentation | {100 * aug_share:.1f} % |")
    print(f"| run wall-clock incl. evaluation | {wall / 60:.1f} min |")
    print("\n| epoch | training time (min) | k-NN top-1 (%) |\n| --- | --- | --- |")
    for r in read_metrics(run, "knn"):
        print(f"| {r['epoch']:.0f} | {r['train_time_s'] / 60:.1f} | {r['top1']:.2f} |")
    print(f"\nrun folder: {run}")


if __name__ == "__main__":
    main()
