"""A method's quick CIFAR-10 recipe at the learning test's budget, with k-NN and linear probes.

    python benchmarks/short_budget.py rotation trainer.threads=1
    python benchmarks/short_budget.py simclr            # quick_cifar10, SimCLR's quick recipe

Loads `quick_cifar10_<method>` (`quick_cifar10` for simclr), trains 3 epochs over an 8,000-image
subset of CIFAR-10 train (tests/test_learning.py's run), and prints one line: k-NN top-1 (k=200,
T=0.1, the 8,000 images as bank) and linear-probe top-1 (on the 8,000 images' cached features) on
the 10,000 test images for the same network at random initialisation and after training, the
training wall-clock time, the last logged images/s and the method's last logged pretext metrics.
Extra arguments are config overrides. Needs CIFAR-10 in $SELFSUP_DATA (or ../shared/data).
"""

import os
import sys
import time
from pathlib import Path

from selfsup.config import load_config
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer

SHORT = ["data.subset=8000", "trainer.epochs=3", "trainer.warmup_epochs=0.5",
         "trainer.knn_bank=8000", "trainer.knn_every=-1", "trainer.progress=false",
         "trainer.checkpoint_every=100"]


def main() -> None:
    method, overrides = sys.argv[1], sys.argv[2:]
    data = os.environ.get("SELFSUP_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    out = Path("runs/short") / f"{method}-{int(time.time())}"
    recipe = "quick_cifar10" if method == "simclr" else f"quick_cifar10_{method}"
    cfg = load_config(recipe, [f"data.root={data}", *SHORT, f"trainer.out={out}", *overrides])
    tr = Trainer(cfg, run_dir=out / "run")

    before = tr.evaluate(("knn", "linear"))  # one feature extraction for both probes
    start = time.perf_counter()
    tr.fit()
    seconds = time.perf_counter() - start
    after = tr.evaluate(("knn", "linear"))
    last = read_metrics(out / "run", "train")[-1]
    pretext = {k: round(v, 4) for k, v in last.items() if k.endswith(("acc", "mse"))}
    print(f"{method} ({recipe} {' '.join(overrides)}): k-NN {before['knn']['top1']:.2f} -> "
          f"{after['knn']['top1']:.2f} %, linear {before['linear']['top1']:.2f} -> "
          f"{after['linear']['top1']:.2f} %, training {seconds:.0f} s, "
          f"{last['images_per_s']:.0f} images/s, {pretext}")


if __name__ == "__main__":
    main()
