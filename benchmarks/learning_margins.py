"""The gains over random init that the learning tests' margins come from, at several seeds.

    python benchmarks/learning_margins.py                       # every case, seeds 0 and 1
    python benchmarks/learning_margins.py --methods simclr,byol --seeds 0,1,2

Runs each case of tests/learning_cases.py (the learning tests' budget: an 8,000-image CIFAR-10
subset, ResNet-18 at width 0.125, k-NN and linear probe on the 10,000 test images at 32 px) at
each seed (`trainer.seed`: initialisation, data order and augmentation all change) and prints a
table: the random-init network's k-NN and linear top-1, the trained network's, the gains, and
the training time. A test margin should sit well below the smallest gain seen. Extra arguments
are config overrides for every run. Needs CIFAR-10 in $SELFSUP_DATA (or ../shared/data).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from learning_cases import CASES, case_overrides, fingerprint  # noqa: E402
from selfsup.config import load_config  # noqa: E402
from selfsup.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    data = os.environ.get("SELFSUP_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    baselines: dict = {}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                recipe, overrides = case_overrides(method, data, out, f"trainer.seed={seed}", *args.overrides)
                trainer = Trainer(load_config(recipe, overrides), run_dir=Path(out) / f"{method}-{seed}")
                key = (fingerprint(trainer.model.backbone), trainer.cfg.eval.size, trainer.cfg.data.subset)
                if key not in baselines:
                    baselines[key] = trainer.evaluate(("knn", "linear"))
                before = baselines[key]
                start = time.perf_counter()
                trainer.fit()
                seconds = time.perf_counter() - start
                after = trainer.evaluate(("knn", "linear"))
                row = [method, seed] + [r[p]["top1"] for p in ("knn", "linear") for r in (before, after)]
                rows.append(row + [seconds])
                print(f"{method} seed {seed}: k-NN {row[2]:.2f} -> {row[3]:.2f}, linear {row[4]:.2f} -> "
                      f"{row[5]:.2f}, {seconds:.0f} s", flush=True)
    print("\n| case | seed | k-NN random -> trained | gain | linear random -> trained | gain | "
          "training | k-NN margin | linear margin |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, seed, k0, k1, l0, l1, seconds in rows:
        _, _, km, lm = CASES[method]
        print(f"| {method} | {seed} | {k0:.2f} -> {k1:.2f} | {k1 - k0:+.2f} | {l0:.2f} -> {l1:.2f} | "
              f"{l1 - l0:+.2f} | {seconds:.0f} s | {km:g} | {lm:g} |")


if __name__ == "__main__":
    main()
