"""iGPT: the palette, tokens and their decoding, the causal mask, BERT masking, both losses
against direct computations, KV-cache sampling against full recomputation, the every-layer
probe and fine-tuning with the generative loss."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.cli import main
from selfsup.config import ConfigError, to_yaml
from selfsup.methods.igpt import IGPT, IGPTConfig, ar_loss, bert_loss
from selfsup.protocol import Progress
from selfsup.train.trainer import Trainer


def _model(objective="ar", size=4, palette=8, depth=2, seed=0):
    torch.manual_seed(seed)
    bb = build_backbone(BackboneConfig(name="igpt_s", embed_dim=16, depth=depth, num_heads=2,
                                       palette_size=palette, causal=objective == "ar"), 3, size)
    model = IGPT(IGPTConfig(objective=objective, palette_images=8), bb)
    pixels = torch.randn(20 * palette, 3, generator=torch.Generator().manual_seed(1))
    bb.palette.build(pixels, seed=0)
    with torch.no_grad():  # the head starts at zero; give it weights so the tests see logits
        model.head.weight.normal_(0, 0.5)
    return model


def _images(b=3, size=4, seed=2):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_palette_is_seeded_kmeans_and_tokens_are_the_nearest_entry():
    pixels = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    a, b = _model().backbone.palette, _model().backbone.palette
    a.build(pixels, seed=3)
    b.build(pixels, seed=3)
    assert torch.equal(a.codebook, b.codebook)
    bb = _model().backbone
    x = _images()
    tokens = bb.tokenize(x)  # [B, L], raster order
    assert tokens.shape == (3, 16)
    px = x.permute(0, 2, 3, 1).reshape(3, 16, 3)  # row-major pixels
    brute = torch.cdist(px, bb.palette.codebook.expand(3, -1, -1)).argmin(-1)
    assert torch.equal(tokens, brute)


def test_tokenize_then_decode_is_exact_up_to_the_palette():
    bb = _model().backbone
    x = _images()
    tokens = bb.tokenize(x)
    decoded = bb.decode(tokens)
    assert decoded.shape == x.shape
    assert torch.equal(bb.tokenize(decoded), tokens)  # a palette image round-trips exactly
    assert torch.equal(decoded[0, :, 1, 2], bb.palette.codebook[tokens[0, 1 * 4 + 2]])
    with pytest.raises(ValueError, match="eval.size=4"):
        bb.tokenize(_images(size=8))


def test_grey_images_get_a_palette_over_intensities():
    bb = build_backbone(BackboneConfig(name="igpt_s", embed_dim=16, depth=1, num_heads=2, palette_size=4),
                        1, 4)
    bb.palette.build(torch.linspace(-1, 1, 100).unsqueeze(1), seed=0)
    assert bb.palette.codebook.shape == (4, 1)
    assert bb.tokenize(torch.zeros(2, 1, 4, 4)).shape == (2, 16)


def test_causal_model_sees_only_earlier_tokens_and_predicts_every_one():
    bb = _model().backbone.eval()
    tokens = torch.randint(0, 8, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 8
    with torch.no_grad():
        h, _ = bb.forward_tokens(tokens)
        h2, _ = bb.forward_tokens(changed)
    # Position i is predicted from tokens < i: changing tokens 9.. leaves positions 0..9 alone.
    torch.testing.assert_close(h[:, :10], h2[:, :10])
    assert not torch.allclose(h[:, 10:], h2[:, 10:])
    first = tokens.clone()
    first[:, 0] = (first[:, 0] + 1) % 8
    with torch.no_grad():
        h3, _ = bb.forward_tokens(first)
    torch.testing.assert_close(h[:, 0], h3[:, 0])  # position 0 sees only the start token


def test_bert_model_sees_every_position_and_zeroes_hidden_tokens():
    bb = _model("bert").backbone.eval()
    assert bb.sos is None  # a start token would get no gradient
    tokens = torch.randint(0, 8, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 8
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 15] = True
    with torch.no_grad():
        h, _ = bb.forward_tokens(tokens)
        h_changed, _ = bb.forward_tokens(changed)
        m1, _ = bb.forward_tokens(tokens, mask=mask)
        m2, _ = bb.forward_tokens(changed, mask=mask)
    assert not torch.allclose(h[:, 0], h_changed[:, 0])  # bidirectional
    torch.testing.assert_close(m1, m2)  # a hidden token's value cannot leak


def test_bert_masking_rate_and_loss_on_hidden_positions_only():
    model = _model("bert", size=8)
    x = _images(b=64, size=8)
    g = torch.Generator().manual_seed(0)
    _, mask = model.prepare([x], g)
    assert abs(mask.float().mean().item() - 0.15) < 0.02
    tokens = model.backbone.tokenize(x)
    logits = torch.randn(64, 64, 8, generator=g)
    loss = bert_loss(logits, tokens, mask)
    ref = torch.stack([F.cross_entropy(logits[i][mask[i]], tokens[i][mask[i]]) for i in range(64)
                       if mask[i].any()]).mean()
    torch.testing.assert_close(loss, ref)
    other = logits.clone()
    other[~mask] = 100.0  # logits at visible positions do not count
    torch.testing.assert_close(bert_loss(other, tokens, mask), loss)


def test_ar_loss_and_the_forward_against_a_direct_computation():
    model = _model().eval()
    x = _images()
    tokens = model.backbone.tokenize(x)
    out = model([x], Progress(0, 1, 1))
    with torch.no_grad():
        logits = model.head(model.backbone.forward_tokens(tokens)[0])
    log_p = logits.double().log_softmax(-1)
    ref = -sum(log_p[b, i, tokens[b, i]] for b in range(3) for i in range(16)) / 48
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    assert math.isclose(out.metrics["bits_per_token"].item(), ref.item() / math.log(2), rel_tol=1e-5)
    torch.testing.assert_close(ar_loss(logits, tokens), out.loss)


def test_kv_cache_gives_the_logits_of_full_recomputation():
    model = _model(size=4).eval()
    bb = model.backbone
    tokens = torch.randint(0, 8, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = bb.forward_tokens(tokens)[0]  # [2, 16, D]
        caches = [{} for _ in bb.blocks]
        states = [bb.forward_cached(tokens[:, :5], 0, caches)]  # the start token + 5 tokens
        for pos in range(6, 16):
            states.append(bb.forward_cached(tokens[:, pos - 1:pos], pos, caches))
    torch.testing.assert_close(torch.cat(states, dim=1), full, atol=1e-5, rtol=1e-5)
    # Sampling the same generator's draws with and without the cache gives the same sequence.
    a = model.complete(tokens[:, :8], torch.Generator().manual_seed(1), cache=True)
    b = model.complete(tokens[:, :8], torch.Generator().manual_seed(1), cache=False)
    assert torch.equal(a, b) and torch.equal(a[:, :8], tokens[:, :8])


def test_objective_and_backbone_must_agree():
    bb = build_backbone(BackboneConfig(name="igpt_s", embed_dim=16, depth=1, num_heads=2, causal=False), 3, 4)
    with pytest.raises(ValueError, match="backbone.causal=true"):
        IGPT(IGPTConfig(objective="ar"), bb)
    with pytest.raises(ConfigError, match="method.objective"):
        tiny_config("igpt", "method.objective=gan")


def test_completions_picture_has_the_given_half_and_samples(tmp_path):
    trainer = Trainer(tiny_config("igpt", f"trainer.out={tmp_path}"), run_dir=tmp_path / "r")
    trainer.model.init_from_data(lambda k: trainer.sample_views(k, 0), seed=0)
    grids = trainer.model.eval().pictures(trainer.sample_views(4, 0))
    rows = grids["completions"]
    assert len(rows) == 2 + trainer.model.cfg.completions and rows[0].shape == (4, 1, 8, 8)
    assert torch.equal(rows[1][..., 4:, :], torch.zeros_like(rows[1][..., 4:, :]))  # the hidden half
    for sample in rows[2:]:
        assert torch.equal(sample[..., :4, :], rows[0][..., :4, :])  # the given half is kept


@pytest.fixture(scope="module")
def igpt_run(tmp_path_factory):
    """A tiny iGPT trained by the command line on digits (8x8, 64 tokens), every checkpoint kept."""
    out = tmp_path_factory.mktemp("igpt")
    recipe = out / "igpt.yaml"
    recipe.write_text(to_yaml(tiny_config("igpt", "trainer.knn_every=-1", "trainer.epochs=0.5",
                                          "trainer.keep_checkpoints=0", "trainer.checkpoint_every_steps=4")))
    assert main(["pretrain", "--recipe", str(recipe), "--run-dir", str(out / "run")]) == 0
    return out / "run"


def test_every_layer_probe_is_one_feature_pass_and_one_result_per_layer(igpt_run, capsys):
    from selfsup.config import load_config
    from selfsup.data import load_dataset
    from selfsup.eval.features import FeatureCache
    from selfsup.eval.protocols import evaluate
    from selfsup.run import load_encoder

    cfg = load_config(igpt_run / "config.yaml", ["eval.layer=all", "eval.linear.epochs=3"])
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    backbone = load_encoder(igpt_run, cfg, 1)
    cache = FeatureCache(backbone, [0.5], [0.5])
    res = evaluate(cache, train, test, cfg.eval, ["knn", "linear"], size=8)
    assert cache.extractions == 2  # every layer of train, every layer of test: one pass each
    for r in res.values():
        assert [row["layer"] for row in r["layers"]] == backbone.layer_names == ["block0", "block1", "final"]
        assert r["best_layer"] in backbone.layer_names and r["top1"] == max(x["top1"] for x in r["layers"])
    assert main(["eval", "linear", str(igpt_run), "eval.layer=all", "eval.linear.epochs=3"]) == 0
    assert main(["eval", "linear", str(igpt_run), "eval.layer=all", "eval.linear.epochs=3", "--random-init"]) == 0
    out = capsys.readouterr().out
    assert "block1" in out and "<- best" in out
    saved = json.loads((igpt_run / "eval_linear_random.json").read_text())
    assert len(saved["layers"]) == 3 and (igpt_run / "eval_linear_layers.png").stat().st_size > 1000
    assert main(["eval", "knn", str(igpt_run), "eval.layer=block7"]) == 2
    assert "eval.layer" in capsys.readouterr().err


def test_random_init_keeps_the_palette_and_nothing_else(igpt_run):
    from selfsup.config import load_config
    from selfsup.run import load_encoder

    cfg = load_config(igpt_run / "config.yaml")
    trained, fresh = load_encoder(igpt_run, cfg, 1), load_encoder(igpt_run, cfg, 1, random_init=True)
    assert torch.equal(trained.palette.codebook, fresh.palette.codebook) and bool(fresh.palette.built)
    assert not torch.equal(trained.wte.weight, fresh.wte.weight)


def test_random_init_method_is_the_trainers_first_model_with_the_runs_palette(igpt_run, tmp_path):
    from selfsup.config import load_config
    from selfsup.run import load_method

    cfg = load_config(igpt_run / "config.yaml")
    fresh = load_method(igpt_run, cfg, 1, random_init=True).state_dict()
    start = Trainer(cfg, run_dir=tmp_path / "r").model.state_dict()  # before init_from_data
    trained = load_method(igpt_run, cfg, 1).state_dict()
    for name, value in fresh.items():
        expected = trained[name] if name.startswith("backbone.palette.") else start[name]
        assert torch.equal(value, expected), name


def test_finetune_adds_the_generative_loss(igpt_run, capsys):
    common = ["eval.finetune.epochs=1", "eval.finetune.batch_size=64", "eval.finetune.size=8",
              "eval.finetune.train_subset=256", "eval.finetune.test_subset=64"]
    assert main(["eval", "finetune", str(igpt_run), *common, "eval.finetune.gen_weight=0.5"]) == 0
    res = json.loads((igpt_run / "eval_finetune.json").read_text())
    assert "0.5 x the pretraining loss" in res["protocol"]
    capsys.readouterr()
    simclr = igpt_run.parent / "simclr"
    from conftest import TINY

    assert main(["pretrain", "--recipe", "quick", "--run-dir", str(simclr), *TINY, "method.proj_hidden=16",
                 "trainer.epochs=0.2"]) == 0
    assert main(["eval", "finetune", str(simclr), *common, "eval.finetune.gen_weight=0.5"]) == 2
    assert "takes 2" in capsys.readouterr().err


def test_checkpoints_follow_held_out_loss_and_probe_from_random_init(igpt_run, capsys):
    from selfsup.train.checkpoint import PREFIX

    kept = sorted(p.name for p in (igpt_run / "checkpoints").glob(f"{PREFIX}*"))
    assert len(kept) == 3  # 11 steps, saved every 4 and at the end: 4, 8, 11
    assert main(["eval", "knn,linear", str(igpt_run), "--checkpoints", "eval.layer=all",
                 "eval.linear.epochs=3", "eval.loss_images=100"]) == 0
    out = capsys.readouterr().out
    assert "Spearman rho" in out and "bits_per_token" in out
    res = json.loads((igpt_run / "eval_linear_checkpoints.json").read_text())
    steps = [p["step"] for p in res["points"]]
    assert steps == [0, 4, 8, 11] and res["points"][0]["checkpoint"] == "random init"
    losses = [p["heldout"]["loss"] for p in res["points"]]
    # At random init the output head is zero: every palette entry is equally likely.
    assert math.isclose(losses[0], math.log(16), rel_tol=1e-5)
    assert losses[-1] < losses[0] - 0.01  # 11 tiny steps: 2.773 -> 2.734 measured
    assert all(p["best_layer"] in ("block0", "block1", "final") for p in res["points"])
    assert set(res["correlation"]) == {"pearson", "spearman"} and "held-out loss" in res["protocol"]
    assert (igpt_run / "eval_knn_checkpoints.json").exists()
    assert (igpt_run / "eval_linear_checkpoints.png").stat().st_size > 1000
    assert main(["eval", "finetune", str(igpt_run), "--checkpoints"]) == 2
    assert "--checkpoints" in capsys.readouterr().err


def test_held_out_loss_is_the_methods_loss_on_fixed_draws(igpt_run):
    from selfsup.config import load_config, view_configs
    from selfsup.data import load_dataset
    from selfsup.eval.track import correlations, heldout_loss
    from selfsup.protocol import method_inputs
    from selfsup.run import load_method
    from selfsup.views import build_view_set

    cfg = load_config(igpt_run / "config.yaml")
    method = load_method(igpt_run, cfg, 1).eval()
    views = build_view_set(view_configs(cfg), [0.5], [0.5])
    images = load_dataset("digits", "test").images[:96]
    got = heldout_loss(method, views, images, Progress(0, 1, 1), batch_size=64, seed=7)
    direct = []
    for i, x in enumerate((images[:64], images[64:])):
        inputs = method_inputs(method, views, x, torch.Generator().manual_seed(7 + i))
        with torch.no_grad():
            direct.append(method(inputs, Progress(0, 1, 1)).loss * len(x))
    assert math.isclose(got["loss"], float(sum(direct)) / 96, rel_tol=1e-5)
    assert got == heldout_loss(method, views, images, Progress(0, 1, 1), batch_size=64, seed=7)
    assert math.isclose(got["bits_per_token"], got["loss"] / math.log(2), rel_tol=1e-5)
    assert correlations([3, 2, 1], [10, 20, 30]) == {"pearson": -1.0, "spearman": -1.0}
    assert correlations([3, 2], [10, 20]) == {"pearson": None, "spearman": None}
