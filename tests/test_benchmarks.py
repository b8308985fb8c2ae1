"""The benchmark scripts that cannot run here in full still run: each one's smoke mode on CPU."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_speedrun_smoke_runs_both_pipelines_and_the_timed_knn_points(tmp_path, capsys):
    curve = load("gpu_speedrun").main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert len(curve) == 2  # the --at point and the end
    (t1, w1, _), (t2, w2, top1) = curve
    assert 0 < t1 < t2 and w1 <= w2 and t1 <= w1
    assert 50 < top1 <= 100  # digits: a random network's k-NN is already far above 10 %
    assert "| baseline: PIL per image, DataLoader with 1 workers | " in out
    assert "share of our step time in augmentation" in out
    assert not any(tmp_path.rglob("*.safetensors"))  # a benchmark: nothing of the run kept
