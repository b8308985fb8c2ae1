"""The training loop for every registered method: steps, checkpoints, exact resume, and the
mechanism for several parameter sets (the two-player test method, tests/two_player.py). Kills and
NaNs mid-run: tests/test_faults.py."""

import pytest
import torch

from conftest import Killed, die_after_checkpoint, tiny_config
from selfsup.config import ConfigError
from selfsup.methods import METHODS
from selfsup.protocol import Output, Progress
from selfsup.run import load_encoder
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer


def tiny(tmp_path, *extra, method="simclr"):
    return tiny_config(method, f"trainer.out={tmp_path}", *extra)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_round_trips_and_resumes_exactly(tmp_path, method):
    """Half an epoch (11 steps) of every method: the weights move, the run folder is complete, a
    checkpoint loads into a fresh model that computes the same loss, and a run stopped right
    after a mid-run checkpoint and resumed ends with the weights, teachers, queues and centres
    of the uninterrupted one."""
    cfg = tiny(tmp_path, "trainer.epochs=0.5", "trainer.knn_every=0",
               "trainer.checkpoint_every_steps=3", "trainer.checkpoint_every=100", method=method)
    whole = Trainer(cfg, run_dir=tmp_path / "whole")
    before = {k: v.clone() for k, v in whole.model.state_dict().items()}
    run = whole.fit()
    after = whole.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    assert read_metrics(run, "train") and read_metrics(run, "knn")
    for name in ("config.yaml", "encoder.safetensors", "normalization.json"):
        assert (run / name).exists()
    assert list((run / "tb").iterdir()), "no TensorBoard events"

    # Checkpoint round trip: a fresh model loaded from disk computes the same loss.
    _, state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == whole.total_steps
    fresh = Trainer(cfg, run_dir=run)
    assert fresh.resume() and fresh.step == whole.total_steps
    x, texts = whole.feed.gather(torch.arange(8))  # texts: an image-text method's captions
    views = whole.make_views(x, aug_seed=0, texts=texts)
    whole.model.eval(), fresh.model.eval()
    with torch.no_grad():
        p = Progress(0, 1, 1)
        assert torch.equal(whole.model(views, p).loss, fresh.model(views, p).loss)
    encoder = load_encoder(run, cfg, in_channels=whole.train_set.images.shape[1])  # data.channels
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, after[f"backbone.{k}"])

    # Exact resume from the step-6 checkpoint.
    cut = Trainer(cfg, run_dir=tmp_path / "cut")
    die_after_checkpoint(cut, 6)
    with pytest.raises(Killed):
        cut.fit()
    resumed = Trainer(cfg, run_dir=tmp_path / "cut")
    assert resumed.resume() and resumed.step == 6
    resumed.fit()
    end = resumed.model.state_dict()
    for k in after:
        assert torch.equal(after[k], end[k]), f"{k} differs after resume"


def test_batch_larger_than_dataset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="larger than the training set"):
        Trainer(tiny(tmp_path, "trainer.batch_size=100000"), run_dir=tmp_path / "r")


@pytest.mark.parametrize("opt,clip", [("sgd", "null"), ("adamw", "null"), ("lars", "0.5")])
def test_optimizers_step(tmp_path, opt, clip):
    cfg = tiny(tmp_path, f"trainer.optimizer={opt}", "trainer.lr=0.05", "trainer.epochs=0.25",
               f"trainer.grad_clip={clip}")
    trainer = Trainer(cfg, run_dir=tmp_path / opt)
    assert type(trainer.sets[0].optimizer).__name__.lower() == opt
    before = [p.clone() for p in trainer.sets[0].params]
    trainer.fit()
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.sets[0].params) if a.ndim > 1)


def test_fractional_epochs_end_mid_epoch_with_a_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, "trainer.epochs=1.5"), run_dir=tmp_path / "run")
    assert trainer.total_steps == round(1.5 * trainer.steps_per_epoch)
    run = trainer.fit()
    assert trainer.step == trainer.total_steps
    _, state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == trainer.total_steps


# -- several parameter sets ----------------------------------------------------------------------
def test_parameter_sets_get_their_own_optimizers_and_settings(tmp_path):
    trainer = Trainer(tiny(tmp_path, "trainer.param_sets.encoder.lr=0.2", method="two_player"),
                      run_dir=tmp_path / "r")
    critic, encoder = trainer.sets
    assert (critic.name, encoder.name) == ("critic", "encoder")  # the declared order
    assert isinstance(critic.optimizer, torch.optim.AdamW)
    assert critic.optimizer.defaults["betas"] == (0.5, 0.999)  # the method's default for the set
    assert critic.peak_lr == pytest.approx(1e-3 * 64 / 256)  # its lr, linearly scaled
    assert encoder.settings.optimizer == trainer.cfg.trainer.optimizer  # the trainer's own
    assert encoder.peak_lr == pytest.approx(0.2 * 64 / 256)  # the recipe's override
    owned = {id(p) for s in trainer.sets for p in s.params}
    assert owned == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert not {id(p) for p in critic.params} & {id(p) for p in encoder.params}
    with pytest.raises(ConfigError, match="trainer.param_sets.generator: two_player has the "
                                          "parameter set.s. critic, encoder"):
        Trainer(tiny(tmp_path, "trainer.param_sets.generator.lr=0.1", method="two_player"),
                run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match="trainer.param_sets.critic.optimizer"):
        tiny(tmp_path, "trainer.param_sets.critic.optimizer=rmsprop", method="two_player")


def test_sets_step_in_order_and_each_backward_reaches_its_own_set_only(tmp_path):
    """The encoder's loss sees the critic after the critic's step; the encoder's step leaves the
    critic's weights and gradients as the critic's own step left them."""
    trainer = Trainer(tiny(tmp_path, method="two_player"), run_dir=tmp_path / "r")
    critic, encoder = trainer.sets
    seen = {}
    loss = encoder.loss

    def spy(views, progress):
        seen["critic"] = [p.detach().clone() for p in critic.params]
        seen["critic_grad"] = [p.grad.clone() for p in critic.params]
        return loss(views, progress)

    encoder.loss = spy
    start = [p.detach().clone() for p in critic.params]
    losses = trainer.train_step(trainer.feed.images[:64], aug_seed=1)
    assert set(losses) == {"critic", "encoder"}
    assert all(not torch.equal(a, b) for a, b in zip(start, seen["critic"]))  # stepped first
    assert all(torch.equal(a, b) for a, b in zip(seen["critic"], critic.params))
    assert all(torch.equal(a, p.grad) for a, p in zip(seen["critic_grad"], critic.params))
    assert {"critic_acc", "align", "fool"} <= set(trainer.last_metrics)


def test_a_declared_set_is_checked(tmp_path):
    from selfsup.protocol import ParamSet

    trainer = Trainer(tiny(tmp_path, method="two_player"), run_dir=tmp_path / "r")
    model = trainer.model
    model.param_sets = lambda: [ParamSet("critic", [model.critic], model.critic_loss)]
    with pytest.raises(ConfigError, match="trainable parameters in no parameter set: backbone"):
        trainer._build_sets()
    model.param_sets = lambda: [ParamSet("a", [model], model.forward), ParamSet("b", [model.critic], model.forward)]
    with pytest.raises(ConfigError, match="in both parameter sets 'a' and 'b'"):
        trainer._build_sets()
    model.param_sets = lambda: [ParamSet("a", [model], model.forward, {"lars_trust": 0.1})]
    with pytest.raises(ValueError, match="lars_trust"):
        trainer._build_sets()


def test_logs_name_each_sets_loss(tmp_path):
    run = Trainer(tiny(tmp_path, "trainer.epochs=0.25", method="two_player"), run_dir=tmp_path / "r").fit()
    row = read_metrics(run, "train")[-1]
    assert {"loss", "loss_critic", "loss_encoder", "critic_acc", "align"} <= set(row)
    assert row["loss"] == pytest.approx(row["loss_critic"] + row["loss_encoder"])


def test_metrics_may_be_numbers_or_tensors(tmp_path):
    trainer = Trainer(tiny(tmp_path, "trainer.epochs=0.25", "trainer.log_every=1"), run_dir=tmp_path / "r")
    s = trainer.sets[0]
    loss = s.loss
    s.loss = lambda v, p: Output(loss(v, p).loss, {"number": 2.5, "tensor": torch.tensor(0.5)})
    run = trainer.fit()
    row = read_metrics(run, "train")[-1]
    assert row["number"] == 2.5 and row["tensor"] == 0.5


def test_a_time_budget_ends_the_run_and_its_schedule_with_the_minutes(tmp_path):
    """trainer.minutes: 50 epochs asked for, 1.5 s of training allowed; the run is cut to the
    steps that fit, the cosine schedule reaches its end at the last step, the final checkpoint
    records the length, and a resume keeps it rather than the epochs' 1,100 steps."""
    cfg = tiny_config("simclr", "trainer.epochs=50", "trainer.minutes=0.025", "trainer.log_every=2",
                      "trainer.warmup_epochs=0.2")
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    asked = trainer.total_steps
    trainer.fit()
    assert trainer.step == trainer.total_steps < asked
    assert 0.5 * 1.5 < trainer.train_time < 1.5 + 3  # a step or two past the budget at most
    logged = read_metrics(tmp_path / "run", "train")
    peak = max(r["lr"] for r in logged)
    assert logged[-1]["lr"] < 0.05 * peak  # the schedule ended, not cut off at its height
    times = [r["train_time_s"] for r in logged]
    assert times == sorted(times)
    _, state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["total_steps"] == state["step"] == trainer.step and state["train_time_s"] > 0.75
    again = Trainer(cfg, run_dir=tmp_path / "run")
    assert again.resume() and again.total_steps == trainer.step
    again.release()


def test_simclr_takes_more_views_and_crops_of_other_sizes():
    """Three 16 px views and two 8 px crops: one backbone pass per size, and the loss is the
    multi-view NT-Xent of the five projections in view order; one view is refused by name."""
    from selfsup.losses import multi_view_nt_xent
    from selfsup.parts.multicrop import encode_crops

    cfg = tiny_config("simclr", "views.n_views=3", "extra_views=[{n_views: 2, size: 8}]")
    trainer = Trainer(cfg)
    views = trainer.sample_views(16, seed=0)
    assert [v.shape[-1] for v in views] == [16, 16, 16, 8, 8]
    model = trainer.model
    out = model(views, trainer.progress())
    z = model.projector(encode_crops(model.backbone, views)).chunk(5)
    assert torch.allclose(out.loss, multi_view_nt_xent(z, cfg.method.temperature)[0], atol=1e-5)
    with pytest.raises(ValueError, match="views.n_views"):
        model(views[:1], trainer.progress())
