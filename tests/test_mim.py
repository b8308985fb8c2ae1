"""Masked image modelling: masks, visible-only encoding, decoder, tokenizers, the MAE / BEiT /
SplitMask losses against direct computations, and MAE's reconstruction pictures."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.backbones.vit import patchify
from selfsup.config import ConfigError
from selfsup.methods.beit import BEiT, BEiTConfig
from selfsup.methods.mae import MAE, MAEConfig, mae_loss
from selfsup.protocol import Progress
from selfsup.losses import nt_xent
from selfsup.methods.splitmask import SplitMask, SplitMaskConfig, split_halves
from selfsup.parts.codebook import PatchTokenizer, kmeans
from selfsup.train.runlog import read_metrics
from selfsup.train.trainer import Trainer
from selfsup.views.masks import block_order, mask_from_order, num_visible, random_order

P0 = Progress(0, 1, 1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_vit(pool="mean", size=16, **kw):
    cfg = BackboneConfig(name="vit_tiny", patch_size=4, pool=pool, embed_dim=32, depth=2, num_heads=2, **kw)
    return build_backbone(cfg, in_channels=3, image_size=size)


# ----------------------------------------------------------------------------- masks


def is_permutation(order):
    return torch.equal(order.sort(dim=1).values, torch.arange(order.shape[1]).expand_as(order))


@pytest.mark.parametrize("ratio,visible", [(0.0, 64), (0.4, 38), (0.75, 16), (0.9, 6)])
def test_mask_ratio_sets_the_visible_count(ratio, visible):
    assert num_visible(64, ratio) == visible
    order = random_order(5, 64, gen(), torch.device("cpu"))
    assert is_permutation(order)
    mask = mask_from_order(order, visible)
    assert mask.sum(1).tolist() == [64 - visible] * 5
    assert not mask.gather(1, order[:, :visible]).any()  # the first `visible` are not masked


def test_mask_ratio_out_of_range_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(64, 1.0)


def test_random_masks_differ_per_image_and_repeat_with_the_seed():
    a = random_order(8, 64, gen(1), torch.device("cpu"))
    assert torch.equal(a, random_order(8, 64, gen(1), torch.device("cpu")))
    assert not torch.equal(a, random_order(8, 64, gen(2), torch.device("cpu")))
    assert len({tuple(r[:16].sort().values.tolist()) for r in a}) == 8


def test_block_masks_have_the_exact_count_and_are_blocky():
    order = block_order(200, 8, 8, 0.4, gen(), torch.device("cpu"))
    assert is_permutation(order)
    m = 64 - num_visible(64, 0.4)
    mask = mask_from_order(order, 64 - m).view(200, 8, 8)
    assert mask.sum((1, 2)).tolist() == [m] * 200

    def neighbour_share(mk):  # share of masked patches whose right neighbour is masked too
        return (mk[:, :, :-1] & mk[:, :, 1:]).sum() / mk[:, :, :-1].sum()

    rand = mask_from_order(random_order(200, 64, gen(), torch.device("cpu")), 64 - m).view(200, 8, 8)
    assert neighbour_share(mask) > neighbour_share(rand) + 0.2  # ~0.4 at random, blocks far more
    assert torch.equal(order, block_order(200, 8, 8, 0.4, gen(), torch.device("cpu")))


@pytest.mark.parametrize("L", [64, 49])
def test_splitmask_halves_are_disjoint_and_cover_every_patch(L):
    a, b = split_halves(random_order(6, L, gen(), torch.device("cpu")))
    assert a.shape[1] == L // 2 and b.shape[1] == L - L // 2
    both = torch.cat([a, b], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(L).expand(6, L))


# ----------------------------------------------------------------------------- encoder


def reference_masked_attention_encoding(vit, x, visible):
    """The full sequence through the blocks, with attention to the removed patches blocked: the
    visible tokens' outputs are what an encoder of the visible tokens alone must give."""
    tokens = vit.embed(x)  # [B, L, D]
    b, L, d = tokens.shape
    allowed = torch.zeros(b, L, dtype=torch.bool).scatter_(1, visible, True)
    attn_mask = allowed[:, None, None, :]  # keys only
    for blk in vit.blocks:
        h = blk.norm1(tokens)
        qkv = blk.attn.qkv(h).reshape(b, L, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        tokens = tokens + blk.attn.proj(o.transpose(1, 2).reshape(b, L, d))
        tokens = tokens + blk.mlp(blk.norm2(tokens))
    out = vit.norm(tokens)
    return out.gather(1, visible.unsqueeze(-1).expand(-1, -1, d))


def test_visible_only_encoding_matches_full_encoding_with_masked_tokens_removed():
    torch.manual_seed(0)
    vit = small_vit().eval()
    x = torch.randn(3, 3, 16, 16)
    visible = random_order(3, 16, gen(), torch.device("cpu"))[:, :5]
    with torch.no_grad():
        fast = vit.forward_tokens(x, keep=visible)
        ref = reference_masked_attention_encoding(vit, x, visible)
    assert fast.shape == (3, 5, 32)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_removed_patches_do_not_reach_the_encoder_and_cost_falls_with_the_ratio():
    torch.manual_seed(0)
    vit = small_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    visible = torch.tensor([[0, 5, 10, 15], [3, 2, 1, 0]])
    mask = mask_from_order(_order_with_first(visible, 16), 4)
    y = x.clone()
    y[patch_pixels(mask)] = 100.0  # change every removed patch
    seen = []
    vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        torch.testing.assert_close(vit(x, keep=visible), vit(y, keep=visible))
    assert seen == [4, 4]  # the blocks see only the 4 visible tokens, not 16


def _order_with_first(visible, L):
    rest = [torch.tensor([i for i in range(L) if i not in set(v.tolist())]) for v in visible]
    return torch.cat([visible, torch.stack(rest)], dim=1)


def patch_pixels(mask, p=4, grid=4):
    """[B, L] patch mask -> [B, C, H, W] pixel mask (broadcast over 3 channels)."""
    m = mask.view(-1, 1, grid, 1, grid, 1).expand(-1, 3, grid, p, grid, p)
    return m.reshape(-1, 3, grid * p, grid * p)


def test_mask_token_replaces_the_masked_patch_embeddings():
    torch.manual_seed(0)
    vit = small_vit(pool="cls").eval()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = mask[1, 7] = True
    token = torch.randn(32)
    emb = vit.embed(x, mask=mask, mask_token=token)  # [B, 1 + L, D]
    expected = vit.patch_embed(patchify(x, 4))
    expected[mask] = token
    expected = expected + vit.pos_embed
    torch.testing.assert_close(emb[:, 1:], expected)
    y = x.clone()
    y[patch_pixels(mask)] = -5.0
    torch.testing.assert_close(vit.forward_tokens(x, mask=mask, mask_token=token),
                               vit.forward_tokens(y, mask=mask, mask_token=token))


# ----------------------------------------------------------------------------- tokenizers


def test_tokenizers_build_deterministic_codebooks_from_the_data():
    torch.manual_seed(0)
    patches = torch.randn(600, 12)
    books = {}
    for kind in ("kmeans", "patches", "uniform", "normal"):
        t1, t2 = PatchTokenizer(kind, "nearest", 16, 12), PatchTokenizer(kind, "nearest", 16, 12)
        t1.build(patches, seed=3)
        t2.build(patches, seed=3)
        assert bool(t1.built) and torch.equal(t1.codebook, t2.codebook)
        books[kind] = t1.codebook
    assert torch.allclose(books["kmeans"], kmeans(patches, 16, 3))
    # "patches": every entry is one of the data's patches, all different
    assert ((books["patches"][:, None] - patches[None]).abs().sum(-1) == 0).any(1).all()
    assert len({tuple(r.tolist()) for r in books["patches"]}) == 16
    torch.testing.assert_close(books["normal"], torch.randn(16, 12, generator=gen(3)))
    # SplitMask's random vectors: every coordinate uniform, zero mean and unit variance
    torch.testing.assert_close(books["uniform"], (torch.rand(16, 12, generator=gen(3)) * 2 - 1) * 3 ** 0.5)
    big = PatchTokenizer("uniform", "nearest", 4000, 12)
    big.build(patches, seed=0)
    assert big.codebook.abs().max() <= 3 ** 0.5 and abs(big.codebook.mean()) < 0.02
    assert abs(big.codebook.var() - 1) < 0.03


def test_token_assignment_dot_and_nearest_against_brute_force():
    t_dot, t_near = PatchTokenizer("normal", "dot", 20, 6), PatchTokenizer("normal", "nearest", 20, 6)
    data = torch.randn(50, 6)
    t_dot.build(data, 0)
    t_near.build(data, 0)
    x = torch.randn(3, 7, 6)
    book = t_dot.codebook
    dot = torch.tensor([[max(range(20), key=lambda j: float(p @ book[j])) for p in row] for row in x])
    near = torch.tensor([[min(range(20), key=lambda j: float((p - book[j]).norm())) for p in row] for row in x])
    assert torch.equal(t_dot(x), dot) and torch.equal(t_near(x), near)
    assert not torch.equal(dot, near)  # the two rules differ on unnormalised entries


def test_tokenizer_errors_are_clear():
    t = PatchTokenizer("kmeans", "nearest", 16, 12)
    with pytest.raises(RuntimeError, match="codebook has not been built"):
        t(torch.randn(1, 2, 12))
    with pytest.raises(ValueError, match="vocab_size"):
        t.build(torch.randn(8, 12), 0)
    with pytest.raises(ValueError, match="method.tokenizer"):
        PatchTokenizer("dalle", "nearest", 16, 12)
    with pytest.raises(ValueError, match="'uniform'.*'normal'"):
        PatchTokenizer("random", "nearest", 16, 12)
    with pytest.raises(ValueError, match="method.assign=dot does not apply to method.tokenizer=vq"):
        PatchTokenizer("vq", "dot", 16, 12)
    with pytest.raises(ConfigError, match="method.tokenizer_steps"):
        tiny_config("beit", "method.tokenizer=vq", "method.tokenizer_steps=0")


def clustered_patches(n=4000, dim=12, clusters=40, seed=0):
    """Patches around `clusters` centres with small noise: a VQ-VAE has structure to learn."""
    g = gen(seed)
    centres = torch.randn(clusters, dim, generator=g)
    return centres[torch.randint(clusters, (n,), generator=g)] + 0.1 * torch.randn(n, dim, generator=g)


VQ = {"dim": 6, "hidden": 32, "steps": 600, "batch": 256, "lr": 3e-3}


def test_vq_tokenizer_learns_leaves_no_dead_code_and_is_seeded():
    x = clustered_patches()
    t = PatchTokenizer("vq", "nearest", 64, 12, vq=VQ)
    info = t.build(x, seed=1)
    # the reconstruction error falls during training, and the dead codes were restarted
    assert info["tokenizer_mse_end"] < 0.3 * info["tokenizer_mse_start"], info
    assert info["tokenizer_restarts"] > 0 and info["tokenizer_s"] > 0
    # after the restarts, every one of the 64 entries is the token of some training patch
    ids = t(x[None])[0]
    assert torch.bincount(ids, minlength=64).min() > 0
    # tokens decode to patches close to the originals (the data's variance is about 1)
    assert F.mse_loss(t.decode(ids), x) < 0.2
    # the same seed trains the same tokenizer; another seed another
    again = PatchTokenizer("vq", "nearest", 64, 12, vq=VQ)
    again.build(x, seed=1)
    for (name, a), (_, b) in zip(t.named_buffers(), again.named_buffers()):
        assert torch.equal(a, b), name
    other = PatchTokenizer("vq", "nearest", 64, 12, vq=VQ)
    other.build(x, seed=2)
    assert not torch.equal(other.vq.codes, t.vq.codes)


def test_vq_assignment_is_its_encoders_nearest_code_not_the_nearest_patch():
    x = clustered_patches()
    t = PatchTokenizer("vq", "nearest", 32, 12, vq=VQ)
    t.build(x, seed=0)
    q = torch.randn(2, 9, 12)
    z = t.vq.encode(q)
    brute = torch.tensor([[min(range(32), key=lambda j: float((zi - t.vq.codes[j]).norm())) for zi in row]
                          for row in z])
    assert torch.equal(t(q), brute)
    # the codebook holds each code's decoded patch, and decode is the VQ-VAE's decoder
    torch.testing.assert_close(t.codebook, t.vq.decode_latents(t.vq.codes))
    torch.testing.assert_close(t.decode(brute), t.vq.decode_latents(t.vq.codes[brute]))
    # the nearest decoded entry is a different rule (the decoder is not the encoder's inverse)
    nearest_entry = torch.cdist(x, t.codebook).argmin(1)
    assert not torch.equal(t(x[None])[0], nearest_entry)
    # its weights are buffers: no method optimizer can train them
    assert not list(t.parameters()) and len(list(t.buffers())) == 15


# ----------------------------------------------------------------------------- losses


def test_mae_loss_is_the_mean_squared_error_on_removed_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    errs = [((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in range(5) if mask[b, i]]
    torch.testing.assert_close(mae_loss(pred, target, mask, False), torch.stack(errs).mean())
    normed = []
    for b in range(2):
        for i in range(5):
            if mask[b, i]:
                t = target[b, i]
                t = (t - t.mean()) / (t.var(unbiased=True) + 1e-6) ** 0.5
                normed.append(((pred[b, i] - t) ** 2).mean())
    torch.testing.assert_close(mae_loss(pred, target, mask, True), torch.stack(normed).mean())


def test_mae_forward_matches_a_direct_computation():
    torch.manual_seed(0)
    model = MAE(MAEConfig(mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2), small_vit())
    x = torch.randn(2, 3, 16, 16)
    x_, order = model.prepare([x], gen())
    loss, _, _ = model([x_, order], P0)
    visible = order[:, :4]
    dec = model.decoder
    tok = dec.embed(model.backbone.forward_tokens(x, keep=visible))
    full = dec.mask_token.expand(2, 16, 16).clone()
    for b in range(2):
        for j, i in enumerate(visible[b]):
            full[b, i] = tok[b, j]
    h = full + dec.pos_embed((4, 4), full)
    for blk in dec.blocks:
        h = blk(h)
    pred = dec.head(dec.norm(h))
    ref = mae_loss(pred, patchify(x, 4), mask_from_order(order, 4), True)
    torch.testing.assert_close(loss, ref)


def tokens_ready(model, n=64):
    model.tokenizer.build(patchify(torch.randn(n, 3, 16, 16), 4).flatten(0, 1), seed=0)
    return model


def test_beit_loss_is_cross_entropy_on_masked_positions():
    torch.manual_seed(0)
    model = tokens_ready(BEiT(BEiTConfig(vocab_size=32), small_vit()))
    x = torch.randn(2, 3, 16, 16)
    x_, order = model.prepare([x], gen())
    loss, metrics, _ = model([x_, order], P0)
    mask = mask_from_order(order, num_visible(16, 0.4))
    out = model.backbone.forward_tokens(x, mask=mask, mask_token=model.mask_token)
    logits = model.head(out)
    ids = model.tokenizer(patchify(x, 4))
    terms = [-logits[b, i].log_softmax(-1)[ids[b, i]] for b in range(2) for i in range(16) if mask[b, i]]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert 0 <= float(metrics["token_acc"]) <= 1


def test_splitmask_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    cfg = SplitMaskConfig(vocab_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                          mim_weight=0.7, contrast_weight=0.3)
    model = tokens_ready(SplitMask(cfg, small_vit()))
    x = torch.randn(4, 3, 16, 16)
    x_, order = model.prepare([x], gen())
    loss, metrics, _ = model([x_, order], P0)
    ids = model.tokenizer(patchify(x, 4))
    a, b = order[:, :8], order[:, 8:]
    mims, descs = [], []
    for seen, other in ((a, b), (b, a)):  # each half on its own through encoder and decoder
        logits, hidden = model.decoder(model.backbone.forward_tokens(x, keep=seen), seen, (4, 4))
        terms = [F.cross_entropy(logits[i, other[i]], ids[i, other[i]], reduction="sum") for i in range(4)]
        mims.append(torch.stack(terms).sum() / other.numel())
        descs.append(hidden.mean(1))
    contrast, _ = nt_xent(descs[0], descs[1], cfg.temperature)
    ref = 0.7 * (mims[0] + mims[1]) / 2 + 0.3 * contrast
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["contrast"], contrast, atol=1e-5, rtol=1e-5)


def test_masked_methods_refuse_a_cnn_backbone():
    resnet = build_backbone(BackboneConfig(name="resnet18", width=0.125), 3, 16)
    for cls, cfg in ((MAE, MAEConfig()), (BEiT, BEiTConfig()), (SplitMask, SplitMaskConfig())):
        with pytest.raises(ValueError, match="needs a ViT backbone"):
            cls(cfg, resnet)
    with pytest.raises(ConfigError, match="masking"):
        tiny_config("mae", "method.masking=grid")
    with pytest.raises(ConfigError, match="tokenizer"):
        tiny_config("beit", "method.tokenizer=dalle")


# ----------------------------------------------------------------------------- in a run


def test_mae_run_writes_reconstruction_pictures(tmp_path):
    cfg = tiny_config("mae", f"trainer.out={tmp_path}", "trainer.epochs=2", "trainer.knn_every=1")
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    run = trainer.fit()
    final = run / "reconstructions.png"
    assert final.exists()
    steps = sorted((run / "pictures").glob("reconstructions_step_*.png"))
    assert len(steps) == 2  # after epoch 1 (with the k-NN) and at the end
    img = np.asarray(Image.open(final))
    scale = 96 // 16
    assert img.shape == ((3 * 18 + 2) * scale, (8 * 18 + 2) * scale, 3)  # 3 rows x 8 images
    # row 2 (visible patches only) shows the removed patches flat at the mean colour
    assert img[:, :, 0].std() > 0


@pytest.mark.parametrize("method", ["beit", "splitmask"])  # tiny runs: k-means and vq tokenizers
def test_tokenizer_codebook_is_built_once_and_saved_with_the_run(tmp_path, method):
    cfg = tiny_config(method, f"trainer.out={tmp_path}")
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    run = trainer.fit()
    fitted = read_metrics(run, "fitted")  # what building the tokenizer cost, in the run log
    assert len(fitted) == 1 and fitted[0]["tokenizer_s"] > 0
    if method == "splitmask":
        assert fitted[0]["tokenizer_steps"] == 20 and "tokenizer_mse_end" in fitted[0]
    book = trainer.model.tokenizer.codebook.clone()
    assert bool(trainer.model.tokenizer.built) and book.abs().sum() > 0
    fresh = Trainer(cfg, run_dir=tmp_path / "run")
    assert not bool(fresh.model.tokenizer.built)
    assert fresh.resume()
    assert bool(fresh.model.tokenizer.built) and torch.equal(fresh.model.tokenizer.codebook, book)
    again = Trainer(cfg, run_dir=tmp_path / "again")
    again.fit()  # the same seed and data build the same codebook
    assert torch.equal(again.model.tokenizer.codebook, book)
    # The random-init baseline of the whole method (step 0 of `--checkpoints`) keeps the codebook
    # the data built and nothing the training changed.
    from selfsup.run import load_method

    start = Trainer(cfg, run_dir=tmp_path / "start").model.state_dict()
    baseline = load_method(tmp_path / "run", cfg, 1, random_init=True).state_dict()
    for name, value in baseline.items():
        expected = trainer.model.state_dict()[name] if name.startswith("tokenizer.") else start[name]
        assert torch.equal(value, expected), name
