"""The quick CIFAR-10 recipe on this machine: throughput, augmentation share, k-NN vs wall-clock.

    python benchmarks/quick_cifar10.py                      # 15-minute training budget
    python benchmarks/quick_cifar10.py --minutes 3 --knn-every 1
    python benchmarks/quick_cifar10.py --recipe cifar10_simclr --minutes 10 trainer.device=cuda
    python benchmarks/quick_cifar10.py --methods simclr,mocov2,mocov3,byol,dino --minutes 5
    python benchmarks/quick_cifar10.py --recipes quick_cifar10,cpu15_cifar10 --knn-every 1

1. Times `--steps` training steps and the same number of augmentation-only calls, and prints
   images/s and the share of step time spent making views.
2. Sizes the run to the budget (trainer.minutes, with epochs = budget x measured images/s /
   training-set size as the first estimate, unless trainer.epochs is overridden), trains with
   online k-NN every `--knn-every` epochs, and prints
   k-NN top-1 (k=200, T=0.1 unless the recipe says otherwise) against training wall-clock time,
   which excludes the time spent evaluating.
3. With --methods, does both for each method's quick recipe at the same training budget and
   ends with one table of images/s and final k-NN top-1, side by side; --recipes does the same
   for named recipes (the 15-minute record: today's quick_cifar10 against cpu15_cifar10), with
   the k-NN point nearest each of 5, 10 and 15 minutes of training.

Every table names the device: the CPU's model and AVX/AMX flags, and the precision chosen.

Needs CIFAR-10 in $SELFSUP_DATA (or ../shared/data beside the project).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.device import describe_device
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
    if not any(o.startswith(("trainer.epochs=", "trainer.minutes=")) for o in overrides):
        # The measured speed is the first estimate; trainer.minutes then ends the run and its
        # schedule when the budget of training time is spent.
        overrides += [f"trainer.epochs={args.minutes * 60 * ips / n:.3f}", f"trainer.minutes={args.minutes}"]
    cfg = load_config(recipe, [*base, *overrides])
    trainer = Trainer(cfg, run_dir=Path(args.out) / f"{recipe}-{int(time.time())}")
    wall = time.perf_counter()
    run_dir = trainer.fit()
    wall = time.perf_counter() - wall

    dev = trainer.device
    name = describe_device(dev) + (f", {torch.get_num_threads()} threads" if dev.type == "cpu" else "")
    n_views = trainer.views.n_views
    print(f"\nrecipe {recipe} on {name}; method {cfg.method.name}, backbone {cfg.backbone.name} "
          f"x{cfg.backbone.width}, batch {cfg.trainer.batch_size}, {n_views} views "
          f"({cfg.views.size}px first), precision {trainer.precision}, "
          f"{trainer.step / trainer.steps_per_epoch:.2f} epochs of {n} images")
    print("\n| measure | value |\n| --- | --- |")
    print(f"| training images/s ({n_views} views each) | {ips:.0f} |")
    print(f"| share of step time in augmentation | {100 * aug_share:.1f} % |")
    print(f"| run wall-clock incl. evaluation | {wall / 60:.1f} min |")
    knn = read_metrics(run_dir, "knn")
    print("\n| epoch | training time (min) | k-NN top-1 (%) |\n| --- | --- | --- |")
    for r in knn:
        print(f"| {r['epoch']:.2f} | {r['train_time_s'] / 60:.1f} | {r['top1']:.2f} |")
    print(f"\nrun folder: {run_dir}")
    return {"recipe": recipe, "method": cfg.method.name, "ips": ips,
            "epochs": trainer.step / trainer.steps_per_epoch,
            "train_min": knn[-1]["train_time_s"] / 60 if knn else float("nan"),
            "top1": knn[-1]["top1"] if knn else float("nan"), "precision": trainer.precision,
            "device": name, "curve": [(r["train_time_s"] / 60, r["top1"]) for r in knn]}


def nearest(curve: list[tuple[float, float]], minutes: float) -> str:
    """The k-NN point of `curve` [(training minutes, top-1)] nearest `minutes`, as 'top-1 (at min)'."""
    if not curve:
        return "-"
    t, top1 = min(curve, key=lambda c: abs(c[0] - minutes))
    return f"{top1:.2f} % ({t:.1f} min)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=None, help="one recipe (default: quick_cifar10)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated methods to compare at the same budget, each with its "
                         "quick CIFAR-10 recipe, e.g. simclr,mocov2,mocov3,byol,dino")
    ap.add_argument("--recipes", default=None,
                    help="comma-separated recipes to train one after the other at the same budget, "
                         "e.g. quick_cifar10,cpu15_cifar10")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--knn-every", type=int, default=2, help="epochs between k-NN evaluations")
    ap.add_argument("--steps", type=int, default=10, help="timed steps for the throughput figures")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("SELFSUP_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    if args.recipes:
        recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    elif args.methods:
        recipes = [recipe_for(m.strip()) for m in args.methods.split(",") if m.strip()]
    else:
        recipes = [args.recipe or "quick_cifar10"]
    results = [run(r, args) for r in recipes]
    if args.recipes and len(results) > 1:
        marks = [m for m in (5, 10, 15) if m < args.minutes] + [args.minutes]
        print(f"\nOne after the other on {results[0]['device']}, {args.minutes:g} min of training each.")
        print("\n| recipe | precision | images/s | epochs | " + " | ".join(f"k-NN near {m:g} min" for m in marks)
              + " |\n" + "| --- " * (4 + len(marks)) + "|")
        for r in results:
            print(f"| {r['recipe']} | {r['precision']} | {r['ips']:.0f} | {r['epochs']:.2f} | "
                  + " | ".join(nearest(r["curve"], m) for m in marks) + " |")
    elif len(results) > 1:
        print(f"\nSame budget for every method: {args.minutes:g} min of training "
              "(epochs sized from each method's measured images/s).")
        print("\n| method | recipe | images/s | epochs | training time (min) | k-NN top-1 (%) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['method']} | {r['recipe']} | {r['ips']:.0f} | {r['epochs']:.2f} | "
                  f"{r['train_min']:.1f} | {r['top1']:.2f} |")


if __name__ == "__main__":
    main()
