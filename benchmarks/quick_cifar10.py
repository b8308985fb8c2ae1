"""The quick CIFAR-10 recipe on this machine: throughput, augmentation share, k-NN vs wall-clock.

    python benchmarks/quick_cifar10.py                      # 15-minute training budget
    python benchmarks/quick_cifar10.py --minutes 3 --knn-every 1
    python benchmarks/quick_cifar10.py --recipe cifar10_simclr --minutes 10 trainer.device=cuda
    python benchmarks/quick_cifar10.py --methods simclr,mocov2,mocov3,byol,dino --minutes 5

1. Times `--steps` training steps and the same number of augmentation-only calls, and prints
   images/s and the share of step time spent making views.
2. Sizes the run to the budget (epochs = budget x measured images/s / training-set size, a
   fraction where it falls between two epochs, unless
   trainer.epochs is overridden), trains with online k-NN every `--knn-every` epochs, and prints
   k-NN top-1 (k=200, T=0.1 unless the recipe says otherwise) against training wall-clock time,
   which excludes the time spent evaluating.
3. With --methods, does both for each method's quick recipe at the same training budget and
   ends with one table of images/s and final k-NN top-1, side by side.

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
    x = trainer.feed.images[: trainer.local_batch].to(trainer.device)
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


def recipe_for(method: str) -> str:
    """The quick CPU recipe of a method: quick_cifar10 is SimCLR's, quick_cifar10_<method> others'."""
    return "quick_cifar10" if method == "simclr" else f"quick_cifar10_{method}"


def run(recipe: str, args: argparse.Namespace) -> dict:
    """Time, size to the budget, train and evaluate one recipe; prints its own tables."""
    base = [f"trainer.out={args.out}", f"trainer.knn_every={args.knn_every}", "trainer.progress=false"]
    probe = Trainer(load_config(recipe, [*base, *args.overrides]), run_dir=Path(args.out) / "probe")
    ips, aug_share = measure(probe, args.steps)
    n = len(probe.train_set)
    del probe

    overrides = list(args.overrides)
    if not any(o.startswith("trainer.epochs=") for o in overrides):
        overrides.append(f"trainer.epochs={args.minutes * 60 * ips / n:.3f}")
    cfg = load_config(recipe, [*base, *overrides])
    trainer = Trainer(cfg, run_dir=Path(args.out) / f"{recipe}-{int(time.time())}")
    wall = time.perf_counter()
    run_dir = trainer.fit()
    wall = time.perf_counter() - wall

    dev = trainer.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    n_views = trainer.views.n_views
    print(f"\nrecipe {recipe} on {name}; method {cfg.method.name}, backbone {cfg.backbone.name} "
          f"x{cfg.backbone.width}, batch {cfg.trainer.batch_size}, {n_views} views "
          f"({cfg.views.size}px first), precision {trainer.precision}, "
          f"{cfg.trainer.epochs:g} epochs of {n} images")
    print("\n| measure | value |\n| --- | --- |")
    print(f"| training images/s ({n_views} views each) | {ips:.0f} |")
    print(f"| share of step time in augmentation | {100 * aug_share:.1f} % |")
    print(f"| run wall-clock incl. evaluation | {wall / 60:.1f} min |")
    knn = read_metrics(run_dir, "knn")
    print("\n| epoch | training time (min) | k-NN top-1 (%) |\n| --- | --- | --- |")
    for r in knn:
        print(f"| {r['epoch']:.2f} | {r['train_time_s'] / 60:.1f} | {r['top1']:.2f} |")
    print(f"\nrun folder: {run_dir}")
    return {"recipe": recipe, "method": cfg.method.name, "ips": ips, "epochs": cfg.trainer.epochs,
            "train_min": knn[-1]["train_time_s"] / 60 if knn else float("nan"),
            "top1": knn[-1]["top1"] if knn else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=None, help="one recipe (default: quick_cifar10)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated methods to compare at the same budget, each with its "
                         "quick CIFAR-10 recipe, e.g. simclr,mocov2,mocov3,byol,dino")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--knn-every", type=int, default=2, help="epochs between k-NN evaluations")
    ap.add_argument("--steps", type=int, default=10, help="timed steps for the throughput figures")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("SELFSUP_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    if args.methods:
        recipes = [recipe_for(m.strip()) for m in args.methods.split(",") if m.strip()]
    else:
        recipes = [args.recipe or "quick_cifar10"]
    results = [run(r, args) for r in recipes]
    if len(results) > 1:
        print(f"\nSame budget for every method: {args.minutes:g} min of training "
              "(epochs sized from each method's measured images/s).")
        print("\n| method | recipe | images/s | epochs | training time (min) | k-NN top-1 (%) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['method']} | {r['recipe']} | {r['ips']:.0f} | {r['epochs']:.2f} | "
                  f"{r['train_min']:.1f} | {r['top1']:.2f} |")


if __name__ == "__main__":
    main()
