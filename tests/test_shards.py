"""Shards (selfsup/data/shards.py) and streaming them (selfsup/data/stream.py, selfsup/train/feed.py):
real files written and read back, real DataLoader worker processes, real training runs."""

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import Killed, die_after_checkpoint, tiny_config
from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.data import DataError, dataset_stats, load_dataset
from selfsup.data.shards import ShardSplit, write_shards
from selfsup.data.stream import (BatchTasks, crop_box, decode_crop, epoch_batches, load_batches, open_shards,
                                 rank_plan, steps_per_epoch)
from selfsup.eval.features import extract_features
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    """The digits set (1438 train, 359 test images, 8x8 grey) as PNG shards of 100 images."""
    out = tmp_path_factory.mktemp("digits") / "shards"
    write_shards("digits", out, per_shard=100, progress=False)
    return out


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """A train/test image folder of real PNG and JPEG files: digits upscaled to 40x32, colour."""
    root = tmp_path_factory.mktemp("photos")
    ds = {s: load_dataset("digits", s) for s in ("train", "test")}
    for split, d in ds.items():
        for i in range(60 if split == "train" else 20):
            a = d.images[i, 0].numpy()
            rgb = np.stack([a, 255 - a, a // 2], -1)
            img = Image.fromarray(rgb).resize((40, 32), Image.NEAREST)
            folder = root / split / f"class_{int(d.labels[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            if i % 3:
                img.save(folder / f"{i}.png")
            else:
                img.save(folder / f"{i}.jpg", quality=95)
    return root


def test_shards_of_a_folder_hold_its_files_and_read_back_its_images_and_labels(photo_folder, tmp_path):
    m = write_shards(str(photo_folder), tmp_path / "s", per_shard=16, progress=False)
    assert set(m["splits"]) == {"train", "test"}
    for split in ("train", "test"):
        memory = load_dataset(str(photo_folder), split, image_size=32, cache=False)
        streamed = open_shards(tmp_path / "s", split, size=32)
        assert streamed.classes == memory.classes
        assert torch.equal(streamed.labels, memory.labels)
        chunks = list(streamed.images.chunks(7))
        assert torch.equal(torch.cat(chunks), memory.images)
        assert torch.equal(streamed.images[torch.tensor([3, 0])], memory.images[[3, 0]])
    # WebDataset layout: <key>.<ext> and <key>.cls per image, the files' own bytes.
    files = sorted(p for p in (photo_folder / "train").rglob("*") if p.is_file())
    with tarfile.open(tmp_path / "s" / "train-000000.tar") as tf:
        names = tf.getnames()
        assert names[:2] == ["000000000.jpg", "000000000.cls"]
        first = tf.extractfile(names[0]).read()
    assert first == files[0].read_bytes()
    assert m["splits"]["train"]["size"] == [32, 40]  # not square: data.image_size must say what to decode to
    with pytest.raises(DataError, match="data.image_size"):
        open_shards(tmp_path / "s", "train")


def test_shards_of_an_array_dataset_equal_it_with_its_statistics(digits_shards):
    for split in ("train", "test"):
        memory = load_dataset("digits", split)
        streamed = open_shards(digits_shards, split)
        assert torch.equal(torch.cat(list(streamed.images.chunks(500))), memory.images)
        assert torch.equal(streamed.labels, memory.labels)
    mean, std = dataset_stats(load_dataset("digits", "train"))
    s = ShardSplit(digits_shards, "train")
    assert np.allclose(s.mean, mean, atol=1e-9) and np.allclose(s.std, std, atol=1e-9)
    assert len(s.files) == 15 and s.counts[-1] == 38


def test_no_image_is_read_twice_in_an_epoch_by_2_ranks_x_2_workers(digits_shards):
    s = ShardSplit(digits_shards, "train")
    steps = steps_per_epoch(s.counts, 2, 2, 32)
    seen = []
    for rank in range(2):
        plan = epoch_batches(s.counts, 0, 3, rank, 2, 2, 50, 32)
        got = [ids for _, ids in load_batches(BatchTasks(s, plan, 8, 1), workers=2)]
        assert len(got) == steps and all(torch.equal(g, torch.from_numpy(p)) for g, p in zip(got, plan))
        for k in range(2):  # worker k's batches come from its own shards only
            mine = {int(s.shard[i]) for ids in got[k::2] for i in ids}
            other = {int(s.shard[i]) for ids in got[1 - k::2] for i in ids}
            assert not mine & other
        seen += [i for ids in got for i in ids.tolist()]
    assert len(seen) == len(set(seen)) == 2 * steps * 32
    # The order is a function of the epoch: another epoch, another order and other shards per rank.
    assert not np.array_equal(epoch_batches(s.counts, 0, 4, 0, 2, 2, 50, 32),
                              epoch_batches(s.counts, 0, 3, 0, 2, 2, 50, 32))
    # One rank, one worker: every image once per epoch, as the in-memory path (len // batch steps).
    order = np.concatenate(rank_plan(s.counts, 0, 0, 0, 1, 1, 1000))
    assert sorted(order.tolist()) == list(range(len(s)))
    assert steps_per_epoch(s.counts, 1, 1, 32) == len(s) // 32
    with pytest.raises(DataError, match="data.workers"):
        steps_per_epoch(s.counts[:3], 2, 2, 32)


def test_decode_crop_draws_a_box_inside_the_image_from_its_seed(tmp_path):
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = crop_box(120, 80, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 120 and 0 <= top < bottom <= 80
        assert 0.08 * 9600 * 0.999 <= (right - left) * (bottom - top) <= 9600 * 1.001
    # No box of half the area fits a 1000x10 strip: the centre crop of the widest allowed ratio.
    want = ((1000 - 40 / 3) / 2, 0, (1000 + 40 / 3) / 2, 10)
    assert crop_box(1000, 10, (0.5, 0.5), (3 / 4, 4 / 3), rng) == pytest.approx(want)
    a = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    buf = tmp_path / "x.jpg"
    Image.fromarray(a).save(buf, quality=95)
    data = buf.read_bytes()
    one = decode_crop(data, "JPEG", 24, (0.25, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    two = decode_crop(data, "JPEG", 24, (0.25, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    assert one.shape == (24, 24, 3) and np.array_equal(one, two)
    # The whole image at scale 1 of the same aspect: what a plain resize gives, within JPEG's draft rounding.
    whole = decode_crop(data, "JPEG", 24, (1.0, 1.0), (4 / 3, 4 / 3), np.random.default_rng(0))
    plain = np.asarray(Image.open(buf).convert("RGB").resize((24, 24), Image.BILINEAR)).astype(int)
    assert np.abs(whole.astype(int) - plain).mean() < 6


def _run(tmp_path, name, shards=None, *extra):
    data = [f"data.name={shards}", "data.workers=2", "data.shuffle_buffer=200"] if shards else []
    cfg = tiny_config("simclr", f"trainer.out={tmp_path}", "trainer.log_every=1", *data, *extra)
    return cfg, Trainer(cfg, run_dir=tmp_path / name)


def test_a_streamed_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(digits_shards, tmp_path, capsys):
    extra = ("trainer.epochs=1.5", "trainer.checkpoint_every_steps=5", "trainer.knn_every=1")
    _, whole = _run(tmp_path, "whole", digits_shards, *extra)
    # Each of the 2 workers reads at least 7 of the 15 shards, at worst the 38-image one and six of 100.
    assert whole.steps_per_epoch == 2 * ((6 * 100 + 38) // 64)
    whole.fit()
    assert read_metrics(whole.run_dir, "knn"), "online k-NN on the streamed test split"

    _, cut = _run(tmp_path, "cut", digits_shards, *extra)
    die_after_checkpoint(cut, 10)
    with pytest.raises(Killed):
        cut.fit()
    _, resumed = _run(tmp_path, "cut", digits_shards, *extra)
    assert resumed.resume() and resumed.step == 10
    resumed.fit()
    after, end = whole.model.state_dict(), resumed.model.state_dict()
    for k in after:
        assert torch.equal(after[k], end[k]), f"{k} differs after resume"

    _, other = _run(tmp_path, "cut", digits_shards, *extra, "data.workers=1")
    with pytest.raises(ConfigError, match="data.workers: 2 then, 1 now"):
        other.resume()

    # `selfsup eval` streams the run's shards too; fine-tuning, which holds its images, refuses them.
    assert main(["eval", "knn", str(whole.run_dir)]) == 0
    assert json.loads((whole.run_dir / "eval_knn.json").read_text())["top1"] > 50
    assert main(["eval", "finetune", str(whole.run_dir)]) == 2
    assert "not from shards yet" in capsys.readouterr().err


def test_memory_and_shards_of_the_same_images_give_the_same_loss_curve(digits_shards, tmp_path):
    """Same images and pixels, same seed: the order differs (a shard permutation and a shuffle
    buffer instead of one permutation), so the curves agree within the noise of the order."""
    extra = ("trainer.epochs=4", "trainer.knn_every=-1")
    curves = {}
    for name, shards in (("memory", None), ("shards", digits_shards)):
        cfg, trainer = _run(tmp_path, name, shards, *extra)
        trainer.fit()
        curves[name] = np.array([r["loss"] for r in read_metrics(trainer.run_dir, "train")])
    m, s = curves["memory"], curves["shards"]
    assert len(m) == 4 * 22 and len(s) == 4 * 18
    # Epoch means differed by at most 0.067 (1.4 %) over seeds 0 and 1; a step's loss varies by 0.05.
    m, s = m.reshape(4, 22).mean(1), s.reshape(4, 18).mean(1)
    assert m == pytest.approx(s, rel=0.025)
    assert m[-1] < m[0] - 0.2 and s[-1] < s[0] - 0.2  # both learn


def test_features_of_streamed_and_in_memory_images_are_equal(digits_shards):
    from selfsup.backbones import build_backbone

    cfg = tiny_config("simclr")
    backbone = build_backbone(cfg.backbone, in_channels=1, image_size=8)
    memory = load_dataset("digits", "test")
    streamed = open_shards(digits_shards, "test", workers=2)
    a = extract_features(backbone, memory.images, [0.5], [0.25], batch_size=64)
    b = extract_features(backbone, streamed.images, [0.5], [0.25], batch_size=64)
    # The pixels are equal (above); the features to float rounding (5e-8 measured: oneDNN's
    # kernels follow the buffers' alignment, the same pixels in another tensor differ as much).
    assert torch.allclose(a, b, rtol=0, atol=1e-6)


def _damage(path, at, data):
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_damaged_shard_is_named(digits_shards, tmp_path, capsys):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(digits_shards, out)
    s = ShardSplit(out, "train")
    shard = s.files[int(s.shard[5])]
    _damage(shard, int(s.offset[5]) + 20, b"\xff" * 16)  # inside image 5's PNG data
    with pytest.raises(DataError, match=f"shard {shard} is damaged: image 5 cannot be decoded"):
        s.pixels(5)
    _damage(shard, int(s.offset[7]) - 512, b"x" * 12)  # image 7's tar header
    with pytest.raises(DataError, match=f"shard {shard} is damaged: image 7 should follow"):
        s.read(7)
    assert main(["shards", "--verify", str(out)]) == 2
    assert f"shard {shard} is damaged: its sha256 differs" in capsys.readouterr().err
    # Training on it stops with one line that names the shard, from a worker process.
    assert main(["pretrain", "--recipe", "quick", f"data.name={out}", "data.workers=2", "data.shuffle_buffer=1",
                 f"trainer.out={tmp_path}", "trainer.progress=false", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"selfsup: error: shard {shard} is damaged"), err
    # A shard cut short is refused when the split is opened.
    with open(s.files[2], "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=f"shard {s.files[2]} is damaged or missing: 1000 bytes"):
        ShardSplit(out, "train")


def test_shards_command_writes_and_refuses_what_it_must(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["shards", "digits", str(out), "--splits", "test", "--shard-size", "200", "--format", "jpg"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["splits"]) == ["test"] and m["splits"]["test"]["formats"] == ["JPEG"]
    assert [e["images"] for e in m["splits"]["test"]["shards"]] == [200, 159]
    capsys.readouterr()
    assert main(["shards", "digits", str(out)]) == 2  # never into a folder that holds files
    assert "is not empty" in capsys.readouterr().err
    assert main(["shards", "digits", str(tmp_path / "t"), "--shard-size", "0"]) == 2
    assert "--shard-size" in capsys.readouterr().err
    for bad in ("data.decode_crop=[0.5,2]", "data.shuffle_buffer=0"):
        assert main(["pretrain", f"data.name={out}", bad, f"trainer.out={tmp_path}"]) == 2
        assert bad.split("=")[0] in capsys.readouterr().err
    assert main(["pretrain", f"data.name={out}", "data.train_split=val", f"trainer.out={tmp_path}"]) == 2
    assert "has no split 'val'" in capsys.readouterr().err
