"""SwAV and iBOT: Sinkhorn's marginals and its global batch across ranks, the swapped loss written
out, the prototypes (unit rows after a step, frozen then moving), the queue; iBOT's patch loss
on masked positions only, its teacher, its masks; and iBOT's learning test (it is ViT-only, so it
cannot share the ResNet budget of tests/learning_cases.py)."""

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA, TinyConvNet, needs_cifar10
from selfsup.backbones.vit import VisionTransformer
from selfsup.config import ConfigError, load_config
from selfsup.methods.ibot import IBOT, IBOTConfig, draw_masks, patch_loss
from selfsup.methods.swav import SwAV, SwAVConfig, swav_loss
from selfsup.parts.sinkhorn import sinkhorn
from selfsup.protocol import Progress
from selfsup.train.trainer import Trainer


def tiny_vit(pool="mean"):
    return VisionTransformer(in_channels=3, image_size=16, patch_size=4, embed_dim=16, depth=1,
                             num_heads=2, pool=pool)


def crops(b=6, n_local=2, g=8, l=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, g, g, generator=gen) for _ in range(2)]
            + [torch.randn(b, 3, l, l, generator=gen) for _ in range(n_local)])


def cosine_scores(b, k, seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T  # [B, K] in [-1, 1], as SwAV's scores


def official_sinkhorn(scores, eps, iters):
    """main_swav.py's distributed_sinkhorn on one process, step for step, in float64."""
    q = torch.exp(scores.double() / eps).T  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


# --- Sinkhorn ----------------------------------------------------------------------------------

def test_sinkhorn_matches_the_official_steps_and_reaches_the_uniform_marginals():
    b, k = 64, 16
    s = cosine_scores(b, k)
    for iters in (1, 3, 10):
        ours = sinkhorn(s, 0.05, iters).double()
        assert torch.allclose(ours, official_sinkhorn(s, 0.05, iters), atol=1e-5)
    # Each sample's code is a distribution (exactly, after the final column step); each
    # prototype's mass approaches B/K as the rounds go on (from far off with a plain softmax).
    before = torch.softmax(s / 0.05, dim=1).sum(0) * k / b
    gaps = [(before - 1).abs().max().item()]
    for iters in (1, 3, 10, 200):
        q = sinkhorn(s, 0.05, iters)
        assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-5)
        gaps.append((q.sum(0) * k / b - 1).abs().max().item())
    assert all(a > b_ for a, b_ in zip(gaps[1:], gaps[2:])), gaps
    assert gaps[0] > 0.5 and gaps[2] < gaps[0] and gaps[-1] < 1e-4, gaps
    # A small epsilon stays finite: exp(s / eps) spans e^(+-400) here.
    assert torch.isfinite(sinkhorn(s, 0.005, 3)).all()


def test_sinkhorn_over_two_simulated_ranks_equals_the_concatenated_batch():
    """Two threads as two ranks, with an all-reduce made of a barrier: each rank's codes are its
    own rows of the codes of the whole batch."""
    s = cosine_scores(40, 12, seed=1)
    parts = [s[:24], s[24:]]  # unequal shares, as a queue's rows can make them
    slots, out = [None, None], [None, None]
    barrier = threading.Barrier(2)

    def reducer(r):
        def reduce(x, op):
            slots[r] = x.clone()
            barrier.wait()
            total = slots[0] + slots[1] if op == "sum" else torch.maximum(slots[0], slots[1])
            barrier.wait()  # both have read before either writes again
            return total
        return reduce

    def run(r):
        out[r] = sinkhorn(parts[r], 0.05, 3, reduce=reducer(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    whole = sinkhorn(s, 0.05, 3)
    assert torch.allclose(torch.cat(out), whole, atol=1e-6)
    # ... and not what each rank would compute alone.
    assert not torch.allclose(sinkhorn(parts[0], 0.05, 3), whole[:24], atol=1e-3)


# --- SwAV --------------------------------------------------------------------------------------

def reference_swav_loss(scores, codes, tau):
    """main_swav.py's loop: for each global crop i, sum over v != i of the batch mean of
    -sum_k q_k log softmax(s_v / tau)_k, over V - 1; then the mean over i."""
    v_total, b, _ = scores.shape
    loss = 0.0
    for i in range(2):
        sub = 0.0
        for v in range(v_total):
            if v == i:
                continue
            for n in range(b):
                logits = scores[v, n].double() / tau
                log_p = logits - math.log(float(torch.exp(logits).sum()))
                sub += -float((codes[i, n].double() * log_p).sum()) / b
        loss += sub / (v_total - 1)
    return loss / 2


@pytest.mark.parametrize("n_views", [2, 3, 6])
def test_swapped_loss_matches_reference(n_views):
    g = torch.Generator().manual_seed(n_views)
    scores = torch.randn(n_views, 5, 7, generator=g).tanh()
    codes = torch.softmax(3 * torch.randn(2, 5, 7, generator=g), dim=-1)
    loss = swav_loss(scores, codes, 0.1)
    assert abs(loss.item() - reference_swav_loss(scores, codes, 0.1)) < 1e-4


def small_swav(**kw):
    torch.manual_seed(0)
    cfg = SwAVConfig(**{"proj_hidden": 16, "proj_dim": 8, "n_prototypes": 10, **kw})
    return SwAV(cfg, TinyConvNet())


def step(model, opt, views, progress):
    """One training step as the trainer takes it: forward, backward, hook, step, on_step_end."""
    opt.zero_grad(set_to_none=True)
    out = model(views, progress)
    out.loss.backward()
    model.on_after_backward(progress)
    opt.step()
    model.on_step_end(progress, out.state)
    return out


def test_prototypes_are_unit_rows_after_every_step():
    model = small_swav(freeze_prototypes_niters=0)
    norms = lambda: model.prototypes.weight.norm(dim=1)  # noqa: E731
    assert torch.allclose(norms(), torch.ones(10), atol=1e-6), "normalised when built"
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    p = Progress(0, 10, 100)
    out = model(crops(), p)
    out.loss.backward()
    model.on_after_backward(p)
    opt.step()
    assert not torch.allclose(norms(), torch.ones(10), atol=1e-3), "the step moved them off the sphere"
    model.on_step_end(p, out.state)
    assert torch.allclose(norms(), torch.ones(10), atol=1e-6)


def test_prototypes_are_frozen_for_the_first_steps_then_move():
    model = small_swav(freeze_prototypes_niters=3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    start = model.prototypes.weight.detach().clone()
    backbone_start = model.backbone.net[0].weight.detach().clone()
    for s in range(3):
        step(model, opt, crops(seed=s), Progress(s, 10, 100))
        assert torch.allclose(model.prototypes.weight, start, atol=1e-6), f"step {s}"
    assert not torch.equal(model.backbone.net[0].weight, backbone_start), "the rest trains"
    step(model, opt, crops(seed=3), Progress(3, 10, 100))
    assert (model.prototypes.weight - start).abs().max() > 1e-3, "step 3 moves them"


def test_queue_fills_from_its_epoch_and_is_used_once_full():
    """Queue of 12 rows, batches of 6, starting at epoch 1 of 2 steps: steps 2 and 3 push (newest
    first), step 4 is the first whose codes use it."""
    model = small_swav(queue_length=12, epoch_queue_starts=1, freeze_prototypes_niters=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pushed = []
    for s in range(5):
        p = Progress(s, 2, 100)
        views = crops(seed=s)
        out = step(model, opt, views, p)
        assert out.metrics["queue_in_use"] == float(s >= 4), s
        if s in (2, 3):
            pushed.append(out.state["queue"])  # [B, 2, d]
        if s < 2:
            assert not model.queue.any(), "nothing queued before epoch_queue_starts"
    # After step 4's push the queue holds step 4's projections, then step 3's.
    assert torch.allclose(model.queue[:, 6:], pushed[1].transpose(0, 1))
    # The queue changes the codes, hence the loss, of the same views.
    model.eval()
    views = crops(seed=9)
    in_use, not_yet = Progress(10, 2, 100), Progress(0, 2, 100)
    assert not torch.isclose(model(views, in_use).loss, model(views, not_yet).loss)


def test_swav_codes_come_from_the_global_crops_and_small_crops_only_predict():
    model = small_swav()
    views = crops(n_local=3)
    out = model(views, Progress(0, 10, 100))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    model2 = small_swav()
    two = model2(views[:2], Progress(0, 10, 100))
    assert not torch.isclose(out.loss, two.loss), "the small crops add prediction terms"


def test_swav_config_checks_name_the_field():
    for kw, field in [({"n_prototypes": 0}, "n_prototypes"), ({"epsilon": 0}, "epsilon"),
                      ({"queue_length": -1}, "queue_length"), ({"temperature": -0.1}, "temperature")]:
        with pytest.raises(ValueError, match=f"method.{field}"):
            SwAVConfig(**kw)


# --- iBOT --------------------------------------------------------------------------------------

def test_patch_loss_matches_a_direct_computation_on_masked_positions_only():
    g = torch.Generator().manual_seed(0)
    n, length, k = 4, 9, 6
    student = 3 * torch.randn(n, length, k, generator=g)
    teacher = 3 * torch.randn(n, length, k, generator=g)
    center = torch.randn(1, k, generator=g)
    mask = torch.rand(n, length, generator=g) < 0.4
    mask[0] = False  # a crop with nothing masked adds 0
    tau_s, tau_t = 0.1, 0.07
    per_crop = []
    for i in range(n):
        terms = []
        for j in range(length):
            if mask[i, j]:
                p_t = torch.softmax((teacher[i, j].double() - center[0].double()) / tau_t, -1)
                log_p_s = torch.log_softmax(student[i, j].double() / tau_s, -1)
                terms.append(-(p_t * log_p_s).sum().item())
        per_crop.append(sum(terms) / len(terms) if terms else 0.0)
    expected = sum(per_crop) / n
    got = patch_loss(student, teacher, mask, center, tau_s, tau_t)
    assert abs(got.item() - expected) < 1e-4
    # The unmasked positions do not count: changing them leaves the loss alone.
    student2 = torch.where(mask.unsqueeze(-1), student, torch.randn_like(student))
    teacher2 = torch.where(mask.unsqueeze(-1), teacher, torch.randn_like(teacher))
    assert torch.allclose(patch_loss(student2, teacher2, mask, center, tau_s, tau_t), got)


def small_ibot(pool="mean", **kw):
    torch.manual_seed(0)
    cfg = IBOTConfig(**{"proj_hidden": 16, "proj_dim": 8, "out_dim": 12, "freeze_last_layer": 0,
                        "mask_prob": 1.0, **kw})
    return IBOT(cfg, tiny_vit(pool))


def ibot_inputs(model, b=4, n_local=2, seed=0):
    views = crops(b=b, n_local=n_local, g=16, l=8, seed=seed)
    return model.prepare(views, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pool", ["mean", "cls"])
@pytest.mark.parametrize("shared", [True, False])
def test_teacher_gets_no_gradient_and_sees_unmasked_crops(pool, shared):
    model = small_ibot(pool, shared_head=shared, patch_out_dim=None if shared else 7)
    seen = []
    orig = model.teacher[0].forward_tokens
    model.teacher[0].forward_tokens = lambda x, *a, **kw: seen.append(kw) or orig(x, *a, **kw)
    inputs = ibot_inputs(model)
    assert inputs[-1].dtype == torch.bool and inputs[-1].shape == (8, 16)
    out = model(inputs, Progress(0, 10, 100))
    assert seen == [{}], "the teacher encodes the global crops without masks"
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None or not p.requires_grad, f"{name} got no gradient (DDP would stop)"
    if not shared:
        assert model.center_patch.shape == (1, 7) and model.patch_layer.weight.shape == (7, 8)
    # The teacher follows the student after the step, and the centres move.
    before = [p.clone() for p in model.teacher.parameters()]
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model.on_step_end(Progress(0, 10, 100), out.state)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))
    assert model.center.abs().sum() > 0 and model.center_patch.abs().sum() > 0


def test_masks_reach_the_student_and_only_masked_crops_have_a_patch_loss():
    model = small_ibot()
    inputs = ibot_inputs(model, n_local=0)
    none = [*inputs[:-1], torch.zeros_like(inputs[-1])]
    p = Progress(0, 10, 100)
    out, out_none = model(inputs, p), model(none, p)
    assert out_none.metrics["patch"].item() == 0.0, "nothing masked: no patch loss"
    assert out.metrics["patch"].item() > 0 and out.metrics["mask_share"] > 0
    assert not torch.isclose(out.metrics["cls"], out_none.metrics["cls"]), "[CLS] sees the mask too"


@pytest.mark.parametrize("kind", ["block", "random"])
def test_mask_ratio_range(kind):
    b, grid = 2000, (8, 8)

    def draw():
        g = torch.Generator().manual_seed(0)
        return draw_masks(b, grid, (0.1, 0.5), 0.5, kind, g, torch.device("cpu"))

    masks = draw()
    assert masks.shape == (b, 64) and masks.dtype == torch.bool
    counts = masks.sum(1)
    masked = counts > 0
    assert abs(masked.float().mean().item() - 0.5) < 0.05, "half the crops are masked at all"
    share = counts[masked].float() / 64
    assert share.min() >= math.floor(0.1 * 64) / 64 and share.max() <= 0.5
    assert share.min() < 0.15 and share.max() > 0.45, "the whole range is drawn"
    assert abs(share.mean().item() - 0.3) < 0.02
    # Seeded: the same generator state gives the same masks.
    assert torch.equal(masks, draw())
    if kind == "block":  # blocks: most masked patches have a masked 4-neighbour
        m = masks[masked].view(-1, 8, 8).float()
        nb = F.pad(m, (1, 1, 1, 1))
        neighbours = nb[:, :-2, 1:-1] + nb[:, 2:, 1:-1] + nb[:, 1:-1, :-2] + nb[:, 1:-1, 2:]
        assert ((neighbours > 0) & (m > 0)).sum() > 0.9 * m.sum()


def test_ibot_refuses_other_backbones_and_bad_settings():
    with pytest.raises(ValueError, match="iBOT .*needs a ViT"):
        IBOT(IBOTConfig(proj_hidden=8, proj_dim=4, out_dim=8), TinyConvNet())
    for kw, field in [({"mask_ratio": [0.5, 0.1]}, "mask_ratio"), ({"mask_prob": 2.0}, "mask_prob"),
                      ({"masking": "grid"}, "masking"), ({"patch_out_dim": 10}, "patch_out_dim"),
                      ({"teacher_patch_temp": 0.0}, "teacher_patch_temp")]:
        with pytest.raises(ValueError, match=f"method.{field}"):
            IBOTConfig(**kw)
    with pytest.raises(ConfigError, match="ViT"):
        load_config("quick_cifar10_ibot", ["backbone.name=resnet18"])


# --- iBOT's learning test ----------------------------------------------------------------------

# iBOT needs a ViT, so it cannot take the ResNet of tests/learning_cases.py; this is that budget
# (8,000 CIFAR-10 images, the recipes' k-NN and linear probe on the 10,000 test images at 32 px,
# fp32, against the same network at random initialisation) for the quick recipe's ViT at half its
# width (64, as the ResNet cases halve theirs) and 2 blocks, 16 px global and 8 px local crops,
# at about the cost of two ResNet cases. A ViT leaves random init slowly (its random features are
# the better ones here: k-NN 28-29 %, linear 35-36 %, against the ResNet's 24-25 % and 28 %), so
# the run is 3 epochs of 128 images (186 steps; the recipe's lr per image), the last layer unfrozen
# from the start. Measured k-NN gains (2-core avx512-bf16 CPU, fp32) at seeds 0, 1, 2: +0.77 +1.09
# +1.31 (2026-12-06; 2 epochs: +0.45 +0.92 +1.37; 4 epochs, k-NN / linear: +1.0 +1.3 +1.4 / +0.4
# +1.8 +1.2). With 4 blocks (62 steps of 256 or 124 of 128), no setting
# tried gained more than +1.5 on k-NN and linear gains ran from -1.2 to +1.2 (lr 1e-3 to 3e-3,
# teacher momentum 0.95 to 0.99, teacher temperature 0.02, 64 or 256 outputs, BN in the head,
# class token or mean pooling, every crop masked, 32 px crops); DINO's loss alone (patch_weight=0,
# or DINO itself on this ViT) gained less (+0.9 / 0.0 and +0.4 / +0.2 at seed 0). Only k-NN is
# asserted, by half the smaller gain of seeds 0 and 1: it catches a collapsed or broken run, not a
# weak one; the linear gain at seed 0 at 4 epochs (+0.4) is too close to a probe's noise across CPUs for a margin.
IBOT_BUDGET = ["data.subset=8000", "trainer.knn_bank=8000", "trainer.warmup_epochs=0.5",
               "trainer.knn_every=-1", "trainer.progress=false", "trainer.checkpoint_every=100",
               "trainer.precision=fp32", "eval.size=32"]
IBOT_CHANGES = ["backbone.embed_dim=64", "backbone.depth=2", "views.size=16", "extra_views.1.size=8",
                "trainer.epochs=3", "trainer.batch_size=128", "trainer.lr=2e-3",
                "method.freeze_last_layer=0"]
IBOT_KNN_MARGIN = 0.4


@pytest.mark.slow
@needs_cifar10
def test_ibot_beats_random_init_on_cifar10(tmp_path):
    cfg = load_config("quick_cifar10_ibot", [f"data.root={SHARED_DATA}", *IBOT_BUDGET, *IBOT_CHANGES,
                                             f"trainer.out={tmp_path}"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    before = trainer.evaluate(("knn",))["knn"]["top1"]
    trainer.fit()
    after = trainer.evaluate(("knn",))["knn"]["top1"]
    print(f"ibot k-NN top-1 on CIFAR-10 test: random init {before:.2f} %, trained {after:.2f} %")
    assert after > before + IBOT_KNN_MARGIN
