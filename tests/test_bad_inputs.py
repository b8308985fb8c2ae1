"""The catalogue of bad settings, recipes, run folders and checkpoints (bad data files and
archives: tests/test_bad_data.py). Each goes through the command line in-process and must end
the way a user can act on: exit status 2 and exactly one line, `selfsup: error: ...`, naming the
setting's dotted key or the file; or, where the project recovers, a one-line warning that says
what it passed over. No traceback, no silently wrong run, no run overwritten."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from selfsup.cli import main
from selfsup.train.checkpoint import checkpoints, latest_checkpoint, load_checkpoint, verify_checkpoint

QUICK = [*TINY, "trainer.epochs=0.1"]  # 2 steps (22 an epoch) on digits; no trainer.threads: it is process-wide


def refused(capsys, argv: list[str], *names: str) -> str:
    """Run `selfsup argv`; assert exit 2 with one `selfsup: error:` line naming each of `names`
    and no traceback. Returns the line."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("selfsup: error:")]
    assert rc == 2, f"exit {rc}, stderr: {err[-1500:]}"
    assert len(errors) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]


# -- settings: `selfsup config` refuses what `selfsup pretrain` would ----------------------------

SETTINGS = [
    # (recipe, overrides, what the one line must name)
    ("quick", ["trainer.lr=nan"], ["trainer.lr", "finite"]),
    ("quick", ["trainer.lr=inf"], ["trainer.lr", "finite"]),
    ("quick", ["trainer.lr=-0.1"], ["trainer.lr"]),
    ("quick", ["trainer.epochs=nan"], ["trainer.epochs", "finite"]),
    ("quick", ["trainer.epochs=0"], ["trainer.epochs"]),
    ("quick", ["trainer.minutes=0"], ["trainer.minutes"]),
    ("quick", ["trainer.epochs=abc"], ["trainer.epochs"]),
    ("quick", ["trainer.warmup_epochs=-5"], ["trainer.warmup_epochs"]),
    ("quick", ["trainer.checkpoint_every=0"], ["trainer.checkpoint_every"]),
    ("quick", ["trainer.checkpoint_every_steps=-1"], ["trainer.checkpoint_every_steps"]),
    ("quick", ["trainer.keep_checkpoints=-1"], ["trainer.keep_checkpoints"]),
    ("quick", ["trainer.batch_size=0"], ["trainer.batch_size"]),
    ("quick", ["trainer.optimizer=adam"], ["trainer.optimizer"]),
    ("quick", ["trainer.precision=fp8"], ["trainer.precision"]),
    ("quick", ["trainer.lr_scaling=cubic"], ["trainer.lr_scaling"]),
    ("quick", ["trainer.device=tpu"], ["trainer.device"]),
    ("quick", ["trainer.momentum=1.5"], ["trainer.momentum"]),
    ("quick", ["trainer.betas=[0.9]"], ["trainer.betas"]),
    ("quick", ["trainer.grad_clip=0"], ["trainer.grad_clip"]),
    ("quick", ["trainer.min_lr=2"], ["trainer.min_lr"]),
    ("quick", ["trainer.weight_decay=-1"], ["trainer.weight_decay"]),
    ("quick", ["trainer.knn_every=-2"], ["trainer.knn_every"]),
    ("quick", ["trainer.knn_bank=0"], ["trainer.knn_bank"]),
    ("quick", ["trainer.threads=0"], ["trainer.threads"]),
    ("quick", ["trainer.run_name=a/b"], ["trainer.run_name"]),
    ("quick", ["trainer.lrr=0.1"], ["trainer.lrr"]),
    ("quick", ["trainer.param_sets.generator.lr=0.1"], ["trainer.param_sets.generator"]),
    ("quick", ["trainer.param_sets.model.lr=-1"], ["trainer.param_sets.model.lr"]),
    ("quick", ["data.subset=-1000"], ["data.subset"]),
    ("quick", ["data.subset=0"], ["data.subset"]),
    ("quick", ["data.image_size=0"], ["data.image_size"]),
    ("quick", ["data.name=''"], ["data.name"]),
    ("quick", ["data.strict=maybe"], ["data.strict"]),
    ("quick", ["backbone.name=resnet9000"], ["backbone.name", "resnet9000"]),
    ("quick", ["backbone.width=0"], ["backbone.width"]),
    ("quick", ["backbone.pool=max"], ["backbone.pool"]),
    ("quick", ["backbone.drop_path=1.5"], ["backbone.drop_path"]),
    ("quick_cifar10_mae", ["backbone.patch_size=0"], ["backbone.patch_size"]),
    ("quick_cifar10_mae", ["backbone.name=resnet18"], ["method.name=mae", "backbone.name=resnet18"]),
    ("quick_cifar10_mae", ["views.size=30"], ["views.size=30", "patch_size"]),
    ("quick_cifar10_relpatch", ["method.tile=20"], ["views.size", "method.tile"]),
    ("quick", ["method.name=nope"], ["method.name"]),
    ("quick", ["method.temperature=0"], ["method.temperature"]),
    ("quick", ["method.temperature=nan"], ["method.temperature", "finite"]),
    ("quick", ["views.size=0"], ["views.size"]),
    ("quick", ["views.scale=[0.9,0.1]"], ["views.scale"]),
    ("quick", ["views.flip_p=2"], ["views.flip_p"]),
    ("quick_cifar10_byol", ["extra_views.0.solarize_p=2"], ["extra_views.0.solarize_p"]),
    ("quick_cifar10_byol", ["extra_views.3.size=8"], ["extra_views.3"]),
    ("quick", ["eval.layer=layer9"], ["eval.layer", "layer9"]),
    ("quick", ["eval.batch_size=0"], ["eval.batch_size"]),
    ("quick", ["eval.knn.k=0"], ["eval.knn.k"]),
    ("quick", ["eval.knn.temperature=-1"], ["eval.knn.temperature"]),
    ("quick", ["eval.linear.epochs=0"], ["eval.linear.epochs"]),
    ("quick", ["eval.linear.lr_grid=[0.1,-1]"], ["eval.linear.lr"]),
    ("quick", ["eval.finetune.epochs=0"], ["eval.finetune.epochs"]),
    ("quick", ["trainer.lr"], ["trainer.lr", "key.sub=value"]),
]


@pytest.mark.parametrize("recipe,overrides,names", SETTINGS, ids=[" ".join(c[1]) for c in SETTINGS])
def test_a_bad_setting_is_refused_by_config_naming_its_key(capsys, recipe, overrides, names):
    refused(capsys, ["config", "--recipe", recipe, *overrides], *names)


def test_pretrain_refuses_a_bad_setting_before_reading_data(capsys, tmp_path):
    """The same check runs before `pretrain` reads anything: a missing dataset is not reached."""
    refused(capsys, ["pretrain", "--run-dir", tmp_path / "run", "data.name=/no/such/data",
                     "trainer.checkpoint_every=0"], "trainer.checkpoint_every")
    assert not (tmp_path / "run").exists()


# -- recipes --------------------------------------------------------------------------------------

def test_a_missing_recipe_file_is_named(capsys, tmp_path):
    refused(capsys, ["config", "--recipe", tmp_path / "mine.yaml"], "mine.yaml", "no such file")


def test_an_unknown_recipe_name_lists_the_shipped_ones(capsys):
    refused(capsys, ["config", "--recipe", "quik"], "quik", "quick_cifar10")


def test_a_recipe_with_a_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer:\n  epochs: 3\n  lr: [0.1,\n")
    refused(capsys, ["config", "--recipe", bad], "broken.yaml", "line")


def test_a_recipe_that_is_not_a_mapping_is_refused(capsys, tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- trainer\n- data\n")
    refused(capsys, ["config", "--recipe", bad], "list.yaml", "mapping")


def test_a_recipe_with_a_misspelt_section_names_it(capsys, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("trainr:\n  epochs: 3\n")
    refused(capsys, ["config", "--recipe", bad], "trainr")


def test_a_finetune_recipe_is_not_a_pretraining_recipe(capsys):
    refused(capsys, ["pretrain", "--recipe", "finetune_quick_cifar10"], "finetune_quick_cifar10",
            "selfsup eval finetune")


# -- run folders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-step digits run with both of its checkpoints kept."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["pretrain", "--run-dir", str(run), *QUICK, "trainer.checkpoint_every_steps=1"]) == 0
    assert [p.name for p in checkpoints(run / "checkpoints")] == ["step_00000001", "step_00000002"]
    return run


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A copy of the finished run for a test to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def test_a_new_run_refuses_the_folder_of_a_finished_run(capsys, copy):
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    refused(capsys, ["pretrain", "--run-dir", copy, *QUICK], str(copy), "--resume", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before


def test_overwrite_starts_afresh_and_leaves_no_old_checkpoint(capsys, copy):
    old = load_checkpoint(latest_checkpoint(copy / "checkpoints"))[0]
    (copy / "eval_knn.json").write_text("{}")
    (copy / "notes.txt").write_text("mine")  # not the run's: left alone
    assert main(["pretrain", "--run-dir", str(copy), *QUICK, "trainer.seed=1", "--overwrite"]) == 0
    assert [p.name for p in checkpoints(copy / "checkpoints")] == ["step_00000002"]
    new = load_checkpoint(latest_checkpoint(copy / "checkpoints"))[0]
    assert any(not torch.equal(old[k], new[k]) for k in old), "the old run's weights survived"
    assert not (copy / "eval_knn.json").exists() and (copy / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"x")
    refused(capsys, ["pretrain", "--run-dir", mine, *QUICK, "--overwrite"], str(mine), "not a selfsup run")
    assert (mine / "holiday.jpg").exists()


def test_a_run_folder_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "run"
    f.write_text("")
    refused(capsys, ["pretrain", "--run-dir", f, *QUICK], str(f), "is a file")


def test_resume_and_overwrite_together_are_refused(capsys, copy):
    refused(capsys, ["pretrain", "--resume", copy, "--overwrite"], "--resume", "--overwrite")


def test_resume_of_a_missing_folder_names_it(capsys, tmp_path):
    refused(capsys, ["pretrain", "--resume", tmp_path / "gone"], "gone", "does not exist")


def test_resume_of_a_folder_that_is_not_a_run_names_it(capsys, tmp_path):
    refused(capsys, ["pretrain", "--resume", tmp_path], str(tmp_path), "config.yaml")


def test_a_damaged_run_config_names_the_file(capsys, copy):
    (copy / "config.yaml").write_text("trainer: {epochs: [\n")
    refused(capsys, ["pretrain", "--resume", copy], "config.yaml")


def test_a_damaged_normalization_file_names_it(capsys, copy):
    (copy / "normalization.json").write_text('{"mean": [0.5]')
    refused(capsys, ["eval", "knn", copy], "normalization.json")


def test_a_second_writer_is_refused_with_the_holders_pid(capsys, copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from selfsup.runfolder import RunFolder; "
         "RunFolder(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)", str(copy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(capsys, ["pretrain", "--resume", copy], str(copy), f"pid {holder.pid}")
        refused(capsys, ["pretrain", "--run-dir", copy, *QUICK, "--overwrite"], f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # The lock goes with its process: after a kill -9 the folder is free again.
    assert main(["pretrain", "--resume", str(copy)]) == 0


def test_two_runs_started_at_once_in_one_folder_one_is_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "selfsup.cli", "pretrain", "--run-dir", str(run), *QUICK,
           "trainer.epochs=1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in outs) == [0, 2], outs
    loser = next(err for rc, err in outs if rc == 2)
    assert "in use by another selfsup process" in loser or "is not empty" in loser
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()
             if '"train"' in ln]
    assert steps == sorted(set(steps)), "two runs wrote into one metrics file"


def test_a_default_run_name_taken_in_the_same_second_gets_a_suffix(tmp_path):
    from selfsup.runfolder import default_run_dir

    first = default_run_dir(str(tmp_path), None, "quick")
    first.mkdir(parents=True)
    second = default_run_dir(str(tmp_path), None, "quick")
    assert second != first and second.name.startswith(first.name)


# -- checkpoints ----------------------------------------------------------------------------------

def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped weights", "truncated state", "missing state",
                                    "missing manifest and garbage weights", "damaged manifest"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(capsys, copy, damage):
    newest = copy / "checkpoints" / "step_00000002"
    if damage == "flipped weights":
        _flip_a_byte(newest / "model.safetensors")
    elif damage == "truncated state":
        data = (newest / "state.pt").read_bytes()
        (newest / "state.pt").write_bytes(data[: len(data) // 3])
    elif damage == "missing state":
        (newest / "state.pt").unlink()
    elif damage == "missing manifest and garbage weights":
        (newest / "manifest.json").unlink()
        (newest / "model.safetensors").write_bytes(b"\0" * 100)
    else:
        (newest / "manifest.json").write_text("{")
    assert main(["pretrain", "--resume", str(copy), "trainer.epochs=0.14"]) == 0
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("selfsup: warning: skipped checkpoint")]
    assert len(warned) == 1 and "step_00000002" in warned[0], err
    # Resumed from step 1: steps 2 and 3 were trained again, and the new checkpoints verify.
    assert [p.name for p in checkpoints(copy / "checkpoints")][-1] == "step_00000003"
    assert all(verify_checkpoint(p) is None for p in checkpoints(copy / "checkpoints"))


def test_resume_refuses_when_no_checkpoint_is_usable(capsys, copy):
    for ckpt in checkpoints(copy / "checkpoints"):
        _flip_a_byte(ckpt / "model.safetensors")
    refused(capsys, ["pretrain", "--resume", copy], "none of the 2 checkpoint", "--overwrite")
    assert len(checkpoints(copy / "checkpoints")) == 2  # nothing was replaced


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_state_file_is_never_unpickled(capsys, copy, tmp_path):
    ckpt = copy / "checkpoints" / "step_00000002"
    for other in checkpoints(copy / "checkpoints")[:-1]:
        shutil.rmtree(other)
    (ckpt / "manifest.json").unlink()  # as if written by hand
    torch.save({"step": 2, "x": _Payload()}, ckpt / "state.pt")
    refused(capsys, ["pretrain", "--resume", copy], "state.pt", "will not run code")
    assert not (Path.cwd() / "pwned").exists()


def test_a_checkpoint_of_another_configuration_names_the_mismatch(capsys, copy):
    refused(capsys, ["pretrain", "--resume", copy, "backbone.width=0.25"], "does not fit",
            "settings changed")


def test_a_crash_leaves_no_partial_checkpoint_after_resume(copy):
    partial = copy / "checkpoints" / ".tmp-step_00000003-99999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (copy / ".tmp-encoder.safetensors").write_bytes(b"half")
    assert main(["pretrain", "--resume", str(copy)]) == 0
    assert not partial.exists() and not (copy / ".tmp-encoder.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_encoder_file_names_it(capsys, copy, damage):
    enc = copy / "encoder.safetensors"
    data = enc.read_bytes()
    enc.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not safetensors" * 10,
                     "empty": b""}[damage])
    refused(capsys, ["eval", "knn", copy], "encoder.safetensors")


def test_weights_of_another_backbone_name_the_file(capsys, copy):
    refused(capsys, ["eval", "knn", copy, "backbone.width=0.25"], "encoder.safetensors", "do not fit")


def test_eval_of_a_run_without_weights_names_it(capsys, copy):
    (copy / "encoder.safetensors").unlink()
    shutil.rmtree(copy / "checkpoints")
    refused(capsys, ["eval", "knn", copy], str(copy), "encoder.safetensors")


def test_eval_of_an_unknown_protocol_and_layer(capsys, copy):
    refused(capsys, ["eval", "knnn", copy], "knnn")
    refused(capsys, ["eval", "linear", copy, "eval.layer=block3"], "eval.layer", "block3")


def test_traceback_flag_shows_the_traceback_of_an_expected_error(capsys):
    from selfsup.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.lr"):
        main(["--traceback", "config", "trainer.lr=nan"])
    with pytest.raises(ConfigError):
        main(["config", "trainer.lr=nan", "--traceback"])


# -- splits whose classes differ -----------------------------------------------------------------

def _folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """root/split/class/k.png, four 8x8 images per class."""
    from PIL import Image

    for split, classes in layout.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(4):
                Image.new("RGB", (8, 8), (40 * k, 60, 200)).save(root / split / c / f"{k}.png")
    return root


def test_a_test_split_with_other_classes_is_refused_naming_both_splits(capsys, tmp_path):
    data = _folder(tmp_path / "pets", {"train": ["cat", "dog"], "test": ["cat", "fox"]})
    refused(capsys, ["pretrain", "--run-dir", tmp_path / "run", f"data.name={data}", "views.size=8",
                     "trainer.batch_size=4", "trainer.progress=false"],
            "data.train_split='train'", "data.test_split='test'", "fox")
    assert not (tmp_path / "run").exists()


def test_a_run_config_with_an_unknown_key_names_file_and_key(capsys, copy):
    text = (copy / "config.yaml").read_text().replace("trainer:\n", "trainer:\n  lr_warmup: 3\n", 1)
    (copy / "config.yaml").write_text(text)
    refused(capsys, ["pretrain", "--resume", copy], "config.yaml", "trainer.lr_warmup")


def test_an_unwritable_output_folder_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(capsys, ["pretrain", *QUICK, f"trainer.out={blocker}"], str(blocker))


def test_a_damaged_earlier_result_is_left_out_of_the_layer_plot_with_a_warning(capsys, copy):
    (copy / "eval_knn_random.json").write_text('{"layers": [')
    assert main(["eval", "knn", str(copy), "eval.layer=all"]) == 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        f"selfsup: warning: {copy / 'eval_knn_random.json'} is not a result file; its curve is left "
        f"out of the plot"], err
    assert (copy / "eval_knn_layers.png").exists()
