"""Transfer: `selfsup eval PROTOCOL RUN eval.data.name=OTHER` evaluates an encoder on another
labelled dataset, mapping channels and resizing as its protocol line says."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from selfsup.cli import main
from selfsup.data import ImageSet, load_dataset
from selfsup.data.imageset import match_channels
from selfsup.eval.features import FeatureCache
from selfsup.eval.protocols import evaluate
from selfsup.run import load_encoder, load_run_config
from selfsup.runfolder import RunFolder


def rgb_folder(root):
    """train/ and test/ split folders of two classes of 12 px RGB PNGs (dark and light)."""
    g = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        for c, (lo, hi) in enumerate(((0, 120), (110, 255))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(lo, hi, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_match_channels_repeats_grey_and_takes_pillows_luma():
    g = np.random.default_rng(1)
    rgb = g.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    grey = match_channels(x, 1)
    pillow = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])
    assert grey.shape == (4, 1, 6, 6) and np.abs(grey[:, 0].numpy().astype(int) - pillow).max() <= 1
    assert torch.equal(match_channels(grey, 3), grey.expand(-1, 3, -1, -1))
    assert match_channels(x, 3) is x
    with pytest.raises(ValueError, match="2 channels"):
        match_channels(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3)


def test_a_grey_encoder_evaluated_on_rgb_images_says_how(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["pretrain", "--run-dir", str(run), *TINY, "trainer.epochs=0.2"]) == 0
    data = rgb_folder(tmp_path / "pets")
    assert main(["eval", "knn,linear", str(run), f"eval.data.name={data}", "eval.knn.k=5",
                 "eval.linear.epochs=5"]) == 0
    res = {p: json.loads((run / f"eval_{p}.json").read_text()) for p in ("knn", "linear")}
    for r in res.values():
        assert (f"transfer: encoder pretrained on digits, evaluated on {data}, RGB to grey by ITU-R 601 "
                f"luma, 12 px images resized to 16 px") in r["protocol"]
    # The same numbers from the grey-mapped sets directly.
    cfg = load_run_config(run, [f"eval.data.name={data}", "eval.knn.k=5", "eval.linear.epochs=5"])
    mean, std = RunFolder(run).read_stats()
    sets = [load_dataset(str(data), s) for s in ("train", "test")]
    train, test = (ImageSet(match_channels(s.images, 1), s.labels, s.classes, s.name) for s in sets)
    cache = FeatureCache(load_encoder(run, cfg, 1), mean, std)
    direct = evaluate(cache, train, test, cfg.eval, ["knn", "linear"], size=16)
    for p in ("knn", "linear"):
        assert res[p]["top1"] == pytest.approx(direct[p]["top1"])
    capsys.readouterr()
    # Refusals name the key or the file.
    assert main(["eval", "knn", str(run), "eval.data.name=''"]) == 2
    assert "eval.data.name" in capsys.readouterr().err
    (run / "normalization.json").unlink()
    assert main(["eval", "knn", str(run), f"eval.data.name={data}"]) == 2
    assert "normalization.json" in capsys.readouterr().err
