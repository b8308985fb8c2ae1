"""SimCLR ResNet-18 on CIFAR-10 as fast as one GPU goes, against the usual PIL DataLoader pipeline.

    python benchmarks/gpu_speedrun.py                       # 10-minute budget, k-NN at 2, 5, 10 min
    python benchmarks/gpu_speedrun.py --minutes 5 --at 1,2
    python benchmarks/gpu_speedrun.py --smoke               # a CPU run of every part, in seconds

Our pipeline: CIFAR-10 resident on the GPU as uint8, SimCLR's two views made in one batched call
on the device, bf16 autocast, channels-last, `torch.compile` (the recipe `cifar10_simclr`, with
trainer.compile=true and the epochs sized to the budget). The baseline in the same run: the usual
per-image pipeline, a DataLoader whose worker processes make each view with PIL (random-resized
crop, flip, colour jitter, grayscale; no torchvision) and hand float tensors to the same model
and the same optimizer step.

1. Times `--steps` full training steps of each pipeline (and our augmentation alone, and the
   baseline's loader alone) and prints views/s, their ratio and the share of step time spent
   making views.
2. Trains ours for `--minutes` of training wall-clock (trainer.minutes, with epochs = budget x
   measured images/s / 50,000 as the first estimate; evaluation time excluded) and prints k-NN
   top-1 (k=200, T=0.1, the 50k training images as bank, the 10k test images at 32 px) at each
   `--at` point and at the end, with the wall-clock of the whole run, compilation and
   evaluations included.

Needs CIFAR-10 in $SELFSUP_DATA (or ../shared/data beside the project); --smoke uses the bundled
digits, a width-0.125 network and the CPU, so that the tests can run it.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from selfsup.config import load_config
from selfsup.device import describe_device
from selfsup.train.trainer import Trainer, step_seed
from selfsup.views import ViewConfig

SMOKE = ["data.name=digits", "data.channels=3", "backbone.width=0.125", "trainer.batch_size=64", "trainer.device=cpu",
         "trainer.compile=false", "method.proj_hidden=64", "views.size=16", "eval.size=16"]


# ---------------------------------------------------------------- the baseline: PIL per image
def _hue_shift(im: Image.Image, shift: float) -> Image.Image:
    """`im` with its hue turned by `shift` (in turns), through HSV as the usual pipelines do."""
    h, s, v = im.convert("HSV").split()
    h = h.point(lambda p: int(p + round(shift * 255)) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class PILViews(torch.utils.data.Dataset):
    """Two SimCLR views of each image, made one image at a time with PIL in the loader's
    workers, as torchvision's RandomResizedCrop / RandomHorizontalFlip / ColorJitter /
    RandomGrayscale pipeline does; float [3, S, S] tensors normalised with (mean, std)."""

    def __init__(self, images: torch.Tensor, cfg: ViewConfig, mean, std):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # uint8 [N, H, W, C]
        self.cfg = cfg
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def _crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        c = self.cfg
        area = w * h
        for _ in range(10):
            target = area * random.uniform(*c.scale)
            aspect = math.exp(random.uniform(math.log(c.ratio[0]), math.log(c.ratio[1])))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
                return x0, y0, x0 + cw, y0 + ch
        return 0, 0, w, h

    def view(self, im: Image.Image) -> torch.Tensor:
        c = self.cfg
        im = im.resize((c.size, c.size), Image.BILINEAR, box=self._crop_box(*im.size))
        if random.random() < c.flip_p:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if random.random() < c.jitter_p:
            ops = [(ImageEnhance.Brightness, c.brightness), (ImageEnhance.Contrast, c.contrast),
                   (ImageEnhance.Color, c.saturation), (None, c.hue)]
            random.shuffle(ops)
            for op, strength in ops:
                if op is None:
                    im = _hue_shift(im, random.uniform(-strength, strength))
                else:
                    im = op(im).enhance(random.uniform(max(0.0, 1 - strength), 1 + strength))
        if random.random() < c.gray_p:
            im = im.convert("L").convert("RGB")
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.float().div_(255) - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        im = Image.fromarray(self.images[i])
        return self.view(im), self.view(im)


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)


def baseline_loader(trainer: Trainer, workers: int) -> torch.utils.data.DataLoader:
    images = trainer.train_set.images
    if images.shape[1] != 3:
        raise SystemExit("gpu_speedrun.py: the PIL baseline takes RGB images (set data.channels=3)")
    ds = PILViews(images, trainer.cfg.views, trainer.mean, trainer.std)
    return torch.utils.data.DataLoader(
        ds, batch_size=trainer.local_batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=trainer.device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=_seed_worker, prefetch_factor=4 if workers > 0 else None)


# ---------------------------------------------------------------- measurements
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Seconds per call of fn(i), after `warmup` calls (allocator, compilation, oneDNN caches)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        fn(warmup + i)
    sync(device)
    return (time.perf_counter() - start) / steps


def measure(trainer: Trainer, steps: int, workers: int) -> dict[str, float]:
    """Views/s of full training steps through our pipeline and through the PIL DataLoader, of
    our augmentation alone and of the loader alone, and our augmentation's share of a step."""
    dev, b = trainer.device, trainer.local_batch
    n_views = trainer.views.n_views
    x = trainer.feed.batch(0)[0]
    g = torch.Generator(device=dev)
    ours = timed(lambda i: trainer.train_step(x, step_seed(0, 0, i)), steps, dev)
    aug = timed(lambda i: trainer.views(x, g.manual_seed(i)), steps, dev)

    loader = baseline_loader(trainer, workers)
    batches = iter(loader)

    def next_views() -> list[torch.Tensor]:
        nonlocal batches
        try:
            pair = next(batches)
        except StopIteration:
            batches = iter(loader)
            pair = next(batches)
        fmt = torch.channels_last if trainer.cfg.trainer.channels_last else torch.contiguous_format
        return [v.to(dev, non_blocking=True).contiguous(memory_format=fmt) for v in pair]

    base = timed(lambda i: trainer.step_on(next_views()), steps, dev)
    loader_only = timed(lambda i: next_views(), steps, dev)
    return {"ours": n_views * b / ours, "aug_share": aug / ours, "aug": n_views * b / aug,
            "baseline": n_views * b / base, "loader": n_views * b / loader_only}


def train(trainer: Trainer, at_minutes: list[float]) -> list[tuple[float, float, float]]:
    """Trains to the end of the run (trainer.minutes re-estimates its length every 10 steps, as
    the trainer does at its logged points), evaluating k-NN when the training time passes each of
    `at_minutes` and at the end: [(training minutes, wall minutes, k-NN top-1)]."""
    t, dev = trainer.cfg.trainer, trainer.device
    marks = sorted(at_minutes)
    results, wall0 = [], time.perf_counter()
    trainer.model.train()
    start = time.perf_counter()
    while trainer.step < trainer.total_steps:
        x, texts = trainer.feed.batch(trainer.step)
        trainer.set_schedules()
        trainer.train_step(x, step_seed(t.seed, 0, trainer.step), texts)
        trainer.step += 1
        if trainer.step % 10 and trainer.step < trainer.total_steps:
            continue  # a host sync only every 10 steps, and at the last
        sync(dev)
        now = time.perf_counter()
        trainer.train_time += now - start
        start = now
        trainer.fit_to_budget(0, 0.0)
        last = trainer.step >= trainer.total_steps
        if last or (marks and trainer.train_time >= marks[0] * 60):
            while marks and trainer.train_time >= marks[0] * 60:
                marks.pop(0)
            top1 = trainer.evaluate(("knn",))["knn"]["top1"]
            results.append((trainer.train_time / 60, (time.perf_counter() - wall0) / 60, top1))
            print(f"  {trainer.train_time / 60:.2f} min of training: k-NN top-1 {top1:.2f} %", flush=True)
            trainer.model.train()
            start = time.perf_counter()
    return results


def main(argv: list[str] | None = None) -> list[tuple[float, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    ap.add_argument("--at", default="2,5", help="further k-NN points, in minutes of training")
    ap.add_argument("--steps", type=int, default=20, help="timed steps for the throughput figures")
    ap.add_argument("--workers", type=int, default=None,
                    help="the baseline loader's worker processes (default: every CPU core)")
    ap.add_argument("--recipe", default="cifar10_simclr")
    ap.add_argument("--out", default="runs/speedrun")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, digits, a tiny network and budget: checks that every part runs")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("SELFSUP_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.smoke:
        args.steps = min(args.steps, 2)
        args.minutes, args.at = min(args.minutes, 0.02), "0.01"
        args.workers = 1 if args.workers is None else args.workers
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    cuda = torch.cuda.is_available()
    base = [f"trainer.out={args.out}", "trainer.progress=false", "trainer.knn_every=-1",
            f"trainer.device={'cuda' if cuda else 'cpu'}", "trainer.precision=auto",
            "trainer.channels_last=true", f"trainer.compile={str(cuda).lower()}",
            *(SMOKE if args.smoke else []), *args.overrides]
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    stamp = int(time.time())
    probe = Trainer(load_config(args.recipe, base), run_dir=Path(args.out) / f"probe-{stamp}")
    rates = measure(probe, args.steps, workers)
    n, views = len(probe.train_set), probe.views.n_views
    del probe

    cfg = load_config(args.recipe, [*base, f"trainer.minutes={args.minutes}",
                                    f"trainer.epochs={args.minutes * 60 * rates['ours'] / views / n:.4f}"])
    trainer = Trainer(cfg, run_dir=Path(args.out) / f"{args.recipe}-{stamp}")
    print(f"{args.recipe} on {describe_device(trainer.device)}: ResNet x{cfg.backbone.width}, batch "
          f"{cfg.trainer.batch_size}, {views} views of {cfg.views.size} px, precision {trainer.precision}, "
          f"compile {cfg.trainer.compile}, about {cfg.trainer.epochs:g} epochs of {n} images", flush=True)
    wall = time.perf_counter()
    curve = train(trainer, [float(m) for m in args.at.split(",") if m.strip()])
    wall = (time.perf_counter() - wall) / 60

    print("\n| pipeline | views/s | vs baseline |\n| --- | --- | --- |")
    print(f"| ours: uint8 on the device, batched views, {trainer.precision}, channels-last"
          f"{', compiled' if cfg.trainer.compile else ''} | {rates['ours']:.0f} | "
          f"{rates['ours'] / rates['baseline']:.2f}x |")
    print(f"| baseline: PIL per image, DataLoader with {workers} workers | {rates['baseline']:.0f} | 1.00x |")
    print(f"| our views alone | {rates['aug']:.0f} | |")
    print(f"| the baseline's loader alone | {rates['loader']:.0f} | |")
    print(f"\nshare of our step time in augmentation: {100 * rates['aug_share']:.1f} %")
    print("\n| training time (min) | wall-clock incl. evaluation (min) | k-NN top-1 (%) |\n| --- | --- | --- |")
    for train_min, wall_min, top1 in curve:
        print(f"| {train_min:.2f} | {wall_min:.2f} | {top1:.2f} |")
    print(f"\nwhole run {wall:.1f} min; run folder {trainer.run_dir}")
    return curve


if __name__ == "__main__":
    main()
