"""CLIP-style image-text pretraining: tokenizers, the causal text encoder, the symmetric loss, the
caption draw, recall@k and zero-shot classification against direct computations, the commands;
and on real data, that a short run on Flickr8k-1k retrieves held-out pairs far above chance."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA, TINY, tiny_config
from selfsup.backbones.text import TextTransformer
from selfsup.cli import main
from selfsup.data import DataError, load_dataset
from selfsup.data.text import BOS, EOS, PAD, Tokenizer
from selfsup.eval.text import recall_at_k, zero_shot
from selfsup.methods.clip import CLIPConfig, clip_loss
from selfsup.protocol import Progress
from selfsup.train.trainer import Trainer

CAPTIONS = [["A dog runs on the grass.", "a brown dog"], ["Two children play in the snow."]]
CLIP_TINY = CLIPConfig.tiny  # bytes, one narrow text block, captions from the class names


def test_byte_tokens_start_end_pad_and_cut():
    tok = Tokenizer.fit("bytes", CAPTIONS, context_length=8, vocab_size=0)
    tokens, valid = tok.encode(CAPTIONS)
    assert tokens.shape == (2, 2, 8) and valid.tolist() == [[True, True], [True, False]]
    assert tokens[0, 1].tolist() == [BOS, *[b + 3 for b in b"a brown"][:6], EOS]  # cut, still ended
    assert (tokens[1, 1] == PAD).all() and tok.vocab_size == 259
    short = Tokenizer.fit("bytes", CAPTIONS, context_length=16, vocab_size=0).ids("Hi")
    assert short == [BOS, ord("h") + 3, ord("i") + 3, EOS]  # lower-cased


def test_bpe_is_deterministic_and_round_trips_through_json():
    a = Tokenizer.fit("bpe", CAPTIONS * 20, context_length=12, vocab_size=300)
    b = Tokenizer.fit("bpe", CAPTIONS * 20, context_length=12, vocab_size=300)
    assert torch.equal(a.encode(CAPTIONS)[0], b.encode(CAPTIONS)[0])
    back = Tokenizer.from_json(a.to_json())
    assert torch.equal(back.encode(CAPTIONS)[0], a.encode(CAPTIONS)[0]) and back.vocab_size == a.vocab_size
    assert len(a.ids("a dog runs on the grass")) < len(Tokenizer(12).ids("a dog runs on the grass"))
    with pytest.raises(DataError, match="tokenizer.json is not a selfsup tokenizer"):
        Tokenizer.from_json("{", "tokenizer.json")


def test_text_encoder_reads_up_to_the_end_token_only():
    torch.manual_seed(0)
    enc = TextTransformer(vocab_size=300, context_length=12, width=16, depth=2, heads=2).eval()
    tokens = torch.tensor([[BOS, 40, 41, 42, EOS] + [PAD] * 7])
    noisy = tokens.clone()
    noisy[0, 6:] = torch.randint(3, 300, (6,))  # anything after the end token: causal attention ignores it
    shorter = tokens[:, :6]
    with torch.no_grad():
        out = enc(tokens)
        assert torch.allclose(out, enc(noisy), atol=1e-6) and torch.allclose(out, enc(shorter), atol=1e-6)
        assert not torch.allclose(out, enc(torch.tensor([[BOS, 40, 41, 43, EOS] + [PAD] * 7])))


def test_clip_loss_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    scale = torch.tensor(14.0)
    loss, acc = clip_loss(img, txt, scale)
    i2t = t2i = 0.0
    for i in range(5):
        row = [scale.item() * float(img[i] @ txt[j]) for j in range(5)]
        col = [scale.item() * float(txt[i] @ img[j]) for j in range(5)]
        i2t -= row[i] - math.log(sum(math.exp(v) for v in row))
        t2i -= col[i] - math.log(sum(math.exp(v) for v in col))
    assert loss.item() == pytest.approx((i2t + t2i) / 10, rel=1e-5)
    assert acc.item() == pytest.approx(float(((img @ txt.T).argmax(1) == torch.arange(5)).float().mean()))


def _tiny_clip(tmp_path, *extra):
    return Trainer(tiny_config("clip", f"trainer.out={tmp_path}", *extra), run_dir=tmp_path / "run")


def test_each_step_pairs_an_image_with_one_of_its_own_captions(tmp_path):
    method = _tiny_clip(tmp_path).model
    tokens = torch.arange(4 * 3 * 5).view(4, 3, 5)
    valid = torch.tensor([[True, False, False], [True, True, False], [True, True, True], [False, True, False]])
    seen = [set() for _ in range(4)]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        _, picked = method.prepare([torch.zeros(4, 1, 8, 8), tokens, valid], g)
        for i in range(4):
            seen[i].add(next(j for j in range(3) if torch.equal(tokens[i, j], picked[i])))
    assert seen == [{0}, {0, 1}, {0, 1, 2}, {1}]


def test_the_logit_scale_is_clipped_at_100(tmp_path):
    method = _tiny_clip(tmp_path).model
    with torch.no_grad():
        method.logit_scale.fill_(10.0)
    method.on_step_end(Progress(0, 1, 1), {})
    assert method.logit_scale.exp().item() == pytest.approx(100.0)


def test_recall_at_k_against_brute_force():
    g = torch.Generator().manual_seed(1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    sim = torch.randn(6, len(owner), generator=g)
    res = recall_at_k(sim, owner, ks=(1, 3))
    for k in (1, 3):
        found = [any(owner[j] == i for j in sim[i].topk(k).indices) for i in range(6)]
        assert res["image_to_text"][k] == pytest.approx(100 * sum(found) / 6)
        found = [owner[m] in sim[:, m].topk(k).indices for m in range(len(owner))]
        assert res["text_to_image"][k] == pytest.approx(100 * sum(found) / len(owner))


def test_zero_shot_averages_the_prompts_of_each_class(tmp_path):
    trainer = _tiny_clip(tmp_path)
    method, test = trainer.model.eval(), load_dataset("digits", "test").subset(range(40))
    templates = ["a photo of a {}.", "the digit {}"]
    res = zero_shot(method, trainer.tokenizer, test, templates, trainer.mean, trainer.std, 16, "cpu")
    with torch.no_grad():
        tokens = trainer.tokenizer.encode([[t.format(c)] for c in test.classes for t in templates])[0][:, 0]
        classes = F.normalize(method.embed_texts(tokens).view(10, 2, -1).mean(1), dim=-1)
        from selfsup.views import eval_transform

        img = method.embed_images(eval_transform(test.images, trainer.mean, trainer.std, 16))
    expected = ((img @ classes.T).argmax(1) == test.labels).float().mean().item() * 100
    assert res["top1"] == pytest.approx(expected) and res["chance"] == 10


def test_a_method_without_captions_and_a_run_without_a_text_side_are_refused(tmp_path, capsys):
    rc = main(["pretrain", "--run-dir", str(tmp_path / "a"), *TINY, "method.name=clip", *CLIP_TINY,
               "--recipe", "quick_cifar10_clip", "data.name=digits", "data.caption_templates=null",
               "views.size=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "data.caption_templates" in err[-1]
    run = tmp_path / "simclr"
    assert main(["pretrain", "--run-dir", str(run), *TINY, "trainer.epochs=0.05"]) == 0
    capsys.readouterr()
    assert main(["eval", "retrieval", str(run)]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_two_views_are_refused_by_the_config_naming_the_keys(capsys):
    assert main(["config", "--recipe", "quick_flickr8k_clip", "views.n_views=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.name=clip" in err[0] and "views.n_views=1" in err[0]


def test_retrieval_and_zero_shot_commands_on_a_templated_run(tmp_path, capsys):
    run = tmp_path / "clip"
    args = [*TINY, "trainer.epochs=0.2", "method.name=clip", *CLIP_TINY]
    assert main(["pretrain", "--run-dir", str(run), "--recipe", "quick_cifar10_clip", "data.name=digits",
                 "views.size=16", *args]) == 0
    assert (run / "tokenizer.json").exists()
    assert main(["eval", "zeroshot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "zero-shot top-1" in out and (run / "eval_zeroshot.json").exists()
    assert main(["eval", "retrieval", str(run)]) == 0
    assert "image to text: R@1" in capsys.readouterr().out


@pytest.mark.skipif(not (SHARED_DATA / "flickr8k-1k.tar.gz").is_file(), reason="Flickr8k-1k not found")
def test_clip_on_flickr8k_retrieves_held_out_pairs_above_chance(tmp_path, capsys):
    run = tmp_path / "flickr"
    assert main(["pretrain", "--recipe", "quick_flickr8k_clip", "--run-dir", str(run), f"data.root={SHARED_DATA}",
                 "trainer.progress=false", "report.auto=false", *LEARNING]) == 0
    capsys.readouterr()
    assert main(["eval", "retrieval", str(run)]) == 0
    import json

    res = json.loads((run / "eval_retrieval.json").read_text())
    print("Flickr8k-1k held-out recall:", res["image_to_text"], res["text_to_image"])
    assert res["image_to_text"]["10"] > MARGIN_I2T and res["text_to_image"]["10"] > MARGIN_T2I


# The learning test's budget on Flickr8k-1k: the recipe at 32 px images and 24 px crops, batch 64,
# 12 epochs (168 steps, 10 s of training in fp32 on the 2-core AVX-512 CPU), one text block. Its
# held-out recall@10 at seeds 0, 1, 2 (each seed also draws the 900 / 100 split): image->text 26.0,
# 26.0, 26.0 %, text->image 23.8, 26.8, 24.2 %, against chance of about 9.6 % and 10 %. The margin
# is about half the smallest gain over chance.
LEARNING = ["data.image_size=32", "views.size=24", "views.scale=[0.6,1.0]", "eval.size=32", "trainer.epochs=12",
            "trainer.warmup_epochs=1", "trainer.batch_size=64", "trainer.lr=2e-3", "method.text_depth=1",
            "trainer.precision=fp32"]
MARGIN_I2T = MARGIN_T2I = 10.0 + 7.0
