"""The Python API (selfsup/api.py): `selfsup.load(RUN).embed(...)` gives the evaluators' features
for the images the data reader would give them, from any of the inputs users hold."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from conftest import TINY
from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.data import load_dataset
from selfsup.data.decode import resize_images
from selfsup.eval.features import FeatureCache
from selfsup.run import load_encoder, load_run_config
from selfsup.runfolder import RunFolder

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits run (1 channel, 8 px images, 16 px views), trained through the API."""
    run = tmp_path_factory.mktemp("api") / "digits"
    assert selfsup.pretrain("quick", *TINY, run_dir=run, trainer={"epochs": 0.1, "seed": 0}) == run
    assert (run / "encoder.safetensors").exists()
    return run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run on a folder of RGB PNGs of several sizes, read at data.image_size=12."""
    root = tmp_path_factory.mktemp("api_folder")
    g = np.random.default_rng(0)
    for i in range(96):
        h, w = (20, 30) if i % 2 else (16, 16)
        a = (g.random((h, w, 3)) * 255).astype(np.uint8)
        a[: h // 2] //= 2 + i % 3  # some structure, so that features differ between images
        Image.fromarray(a).save(root / f"{i:03d}.png")
    run = root.parent / "folder_run"
    assert main(["pretrain", "--run-dir", str(run), *TINY, f"data.name={root}", "data.image_size=12",
                 "data.test_split=null", "trainer.epochs=0.2", "views.size=12"]) == 0
    return run, root


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def evaluator_features(run: Path, images: torch.Tensor) -> torch.Tensor:
    """What `selfsup eval` extracts: the run's encoder, its normalization.json, eval size."""
    cfg = load_run_config(run)
    mean, std = RunFolder(run).read_stats()
    backbone = load_encoder(run, cfg, images.shape[1])
    return FeatureCache(backbone, mean, std).features(images, size=cfg.eval.size or cfg.views.size)


def test_embed_equals_the_evaluators_features_in_every_layout(digits_run):
    enc = selfsup.load(digits_run)
    test = load_dataset("digits", "test")
    x = test.images[:50]
    want = evaluator_features(digits_run, x)
    assert torch.equal(enc.embed(x), want)  # NCHW tensor
    # The same pixels in other containers: equal up to float rounding (a batch's memory strides
    # can pick another kernel path: differences of 3e-8 measured).
    nhwc = x.permute(0, 2, 3, 1).numpy()
    close(enc.embed(nhwc), want)  # NHWC array
    close(enc.embed(x[:, 0].numpy()), want)  # a batch of grey images [N, H, W]
    close(enc.embed([a for a in nhwc]), want)  # a list of HWC arrays
    pil = [Image.fromarray(a[..., 0]) for a in nhwc]
    close(enc.embed(pil), want)  # PIL images
    close(enc.embed(pil[3]), want[3:4])  # one image
    rgb = [p.convert("RGB") for p in pil]  # grey in RGB: Pillow's luma gives the grey back
    close(enc.embed(rgb), want)
    assert enc.embed(x).shape == (50, enc.dim) and enc.channels == 1


def test_layers_give_every_layers_pooled_features(digits_run):
    enc = selfsup.load(digits_run)
    x = load_dataset("digits", "test").images[:10]
    out = enc.layers(x)
    assert list(out) == enc.layer_names and len(out) >= 4
    for name, f in out.items():
        assert f.shape == (10, enc.model.layer_dims[name])
    one = enc.layers(x, "layer2")
    assert list(one) == ["layer2"] and torch.equal(one["layer2"], out["layer2"])


def test_random_init_is_the_evaluators_baseline(digits_run):
    trained, start = selfsup.load(digits_run), selfsup.load(digits_run, random_init=True)
    x = load_dataset("digits", "test").images[:10]
    assert not torch.equal(trained.embed(x), start.embed(x))
    cfg = load_run_config(digits_run)
    base = load_encoder(digits_run, cfg, 1, random_init=True)
    assert all(torch.equal(a, b) for a, b in zip(start.model.state_dict().values(), base.state_dict().values()))


def test_pil_images_of_any_size_are_prepared_as_the_folder_reader_prepares_them(folder_run):
    run, root = folder_run
    enc = selfsup.load(run)
    assert enc.image_size == 12 and enc.channels == 3
    files = sorted(root.glob("*.png"))[:8]
    data = load_dataset(str(root), "train", image_size=12)  # the reader (sorted by name), at 12 px
    want = evaluator_features(run, data.images[:8])
    pictures = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            pictures.append(im.copy())
    assert torch.equal(enc.embed(pictures), want)
    # Arrays at their own sizes go the same way as the decoded files.
    arrays = [np.asarray(p) for p in pictures]
    assert torch.equal(enc.embed(arrays), want)
    # One array of same-sized images is resized as the array readers (npz, idx) resize theirs.
    batch = np.stack(arrays[1::2])
    resized = resize_images(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), 12)
    close(enc.embed(batch), evaluator_features(run, resized))


def test_what_embed_refuses(digits_run, folder_run):
    enc = selfsup.load(digits_run)
    x = torch.zeros(4, 3, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="layout="):
        enc.embed(x)
    assert enc.embed(x, layout="nchw").shape == (4, enc.dim)  # 3 channels -> luma
    with pytest.raises(TypeError, match="uint8"):
        enc.embed(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="no channel axis"):
        enc.embed(torch.zeros(2, 5, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        enc.embed([np.zeros((8, 8), np.uint8), np.zeros((9, 8), np.uint8)])
    with pytest.raises(ValueError, match="layout"):
        enc.embed(x, layout="chw")
    with pytest.raises(FileNotFoundError):
        selfsup.load(digits_run / "nowhere")
    (digits_run.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        selfsup.load(digits_run.parent / "empty")


def test_the_readmes_example_runs(digits_run):
    text = README.read_text()
    block = re.search(r"```python\n(import selfsup\n.*?)```", text, re.S)
    assert block, "README.md has no ```python block starting with `import selfsup`"
    code = block.group(1).replace('"runs/quick"', repr(str(digits_run)))
    assert str(digits_run) in code, "the README example loads the run folder runs/quick"
    images = load_dataset("digits", "test").images[:5]
    scope: dict = {"images": images}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.equal(scope["z"], evaluator_features(digits_run, images))


def test_a_bad_run_config_is_refused_by_name(digits_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(digits_run, bad)
    cfg = (bad / "config.yaml").read_text().replace("width: 0.125", "width: -1")
    (bad / "config.yaml").write_text(cfg)
    with pytest.raises(ConfigError, match="config.yaml"):
        selfsup.load(bad)


def test_evaluate_returns_what_the_command_writes(digits_run):
    res = selfsup.evaluate(digits_run, "knn,linear", "eval.linear.epochs=2", eval={"knn": {"k": 5}})
    assert set(res) == {"knn", "linear"}
    for p in res:
        written = json.loads((digits_run / f"eval_{p}.json").read_text())
        assert res[p]["top1"] == written["top1"] and res[p]["protocol"] == written["protocol"]
    assert "k=5" in res["knn"]["protocol"]
    base = selfsup.evaluate(digits_run, "knn", random_init=True, eval={"knn": {"k": 5}})
    assert (digits_run / "eval_knn_random.json").exists() and base["knn"]["weights"].startswith("random init")


def test_the_api_refuses_bad_settings_by_their_dotted_key(tmp_path):
    with pytest.raises(ConfigError, match="trainer.epochs"):
        selfsup.pretrain("quick", *TINY, run_dir=tmp_path / "x", trainer={"epochs": -1})
    with pytest.raises(ConfigError, match="unknown protocol"):
        selfsup.evaluate(tmp_path, "nope")
    assert not (tmp_path / "x").exists()


EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(script: str, *args) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_near_duplicates_example_finds_the_copy(digits_run, tmp_path):
    images = load_dataset("digits", "test").images[:12, 0].numpy()
    for i, a in enumerate(images):
        Image.fromarray(a).resize((24, 24)).save(tmp_path / f"{i:02d}.png")
    Image.fromarray(images[7]).resize((24, 24)).save(tmp_path / "copy_of_07.jpg", quality=95)
    first = run_example("near_duplicates.py", digits_run, tmp_path, "--top", "3").splitlines()[0]
    assert "07.png" in first and "copy_of_07.jpg" in first


def test_the_classifier_example_trains(digits_run):
    # Fine-tuned for 2 epochs (24 steps): 59.6 % measured; ten classes, chance is 10 %.
    out = run_example("train_classifier.py", digits_run, "--epochs", "2", "--lr", "3e-3")
    accs = [float(line.split("top-1 ")[1].split(" %")[0]) for line in out.splitlines()]
    assert len(accs) == 2 and accs[-1] > 35
