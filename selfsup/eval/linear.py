"""Linear probe on cached, frozen features.

Protocol: standardise the features with the training set's mean and std (what the
BatchNorm-without-affine in front of MAE's linear head does, He et al. 2021,
https://arxiv.org/abs/2111.06377, App. A.2), train one linear layer with cross-entropy,
mini-batch SGD (Nesterov momentum) or AdamW and a cosine learning-rate schedule, choose weight
decay (and optionally the learning rate) by top-1 on a stratified, seeded held-out slice of the
training set, then retrain on the whole training set and report test top-1/top-5.

Speed: the problem is convex and small; what costs is ~10k mini-batch steps (search + retrain),
each a batch gather and two thin matmuls. Hence (1) no autograd: the gradient of softmax
cross-entropy w.r.t. the logits is simply softmax - onehot; (2) every grid point is trained at
once as one tall [G*C, D+1] weight matrix sharing each mini-batch, so a grid of G costs matmuls
G times taller, not G runs with G gathers; (3) the bias is a constant-1 input column, so one
matmul gives the logits and one the whole gradient; (4) small steps run on one CPU thread.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from selfsup.eval.knn import _check, _num_classes, topk_accuracy
from selfsup.eval.subsets import stratified_subset
from selfsup.schedules import cosine_schedule

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class LinearConfig:
    """Linear-probe optimisation and hyper-parameter search (see the module docstring)."""

    epochs: int = 100
    batch_size: int = 1024
    # "sgd": Nesterov momentum, L2 penalty wd/2 |W|^2 in the loss; "adamw": decoupled decay,
    # whose weight_decay is in other units (shrinks by lr * wd per step): give it its own wd_grid.
    optimizer: str = "sgd"
    # Peak of the cosine schedule (null: 0.1 for sgd, 1e-3 for adamw); used when lr_grid is empty
    # or there is no search.
    lr: Optional[float] = None
    weight_decay: float = 0.0  # used when wd_grid is empty or there is no search
    momentum: float = 0.9  # SGD momentum, or AdamW beta1
    # Grids searched on the held-out slice; an empty grid means "use the single value above".
    # The default decay grid spans four decades: little data in many dimensions wants ~0.1,
    # plenty of data ~0.
    lr_grid: list[float] = field(default_factory=list)
    wd_grid: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    val_fraction: float = 0.1  # share of each class held out to choose hyper-parameters; 0: no search

    def __post_init__(self):
        self.validate()

    def candidates(self) -> list[tuple[float, float]]:
        """(lr, weight_decay) pairs to compare, lr-major."""
        lrs, wds = self.lr_grid or [self.peak_lr()], self.wd_grid or [self.weight_decay]
        return [(lr, wd) for lr in lrs for wd in wds]

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else {"sgd": 0.1, "adamw": 1e-3}[self.optimizer]

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"eval.linear.optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.linear.{name}={getattr(self, name)}: must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"eval.linear.val_fraction={self.val_fraction}: must be in [0, 1)")
        for name, values, ok in (("lr", [lr for lr, _ in self.candidates()], lambda v: v > 0),
                                 ("weight_decay", [wd for _, wd in self.candidates()], lambda v: v >= 0)):
            bad = [v for v in values if not ok(v)]
            if bad:
                grid = f"{name} or {'lr_grid' if name == 'lr' else 'wd_grid'}"
                raise ValueError(f"eval.linear.{grid} holds {bad[0]}: must be {'positive' if name == 'lr' else '>= 0'}")


def _standardise(train_x: Tensor, *others: Tensor) -> list[Tensor]:
    """Standardise with train_x's per-dimension mean/std and append a constant-1 bias column.

    [N, D] -> [N, D+1] float32 each. Constant dimensions keep std 1 rather than dividing by 0.
    """
    train_x = train_x.float()
    mean = train_x.mean(0)
    std = train_x.std(0, unbiased=False)
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
    out = []
    for x in (train_x, *others):
        z = torch.empty(x.shape[0], x.shape[1] + 1, device=train_x.device)
        torch.div(x.to(train_x.device).float() - mean, std, out=z[:, :-1])
        z[:, -1] = 1.0
        out.append(z)
    return out


# Per-step matmul size (multiply-adds) below which the CPU loop runs on one thread. Every
# parallel op wakes the other threads, which costs up to a scheduler timeslice (~1 ms) when the
# cores are busy: on a loaded 2-core machine the default probe (10 classes, 5 heads: 26M) ran
# 5-10x slower on 2 threads than on 1, while 2 threads first paid off clearly at ~50M.
SINGLE_THREAD_WORK = 2**25


@contextlib.contextmanager
def _cpu_threads(device: torch.device, work: int):
    """One intra-op thread for small per-step work on CPU; torch's setting is restored after."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or work >= SINGLE_THREAD_WORK or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batches(n: int, bs: int, epochs: int, seed: int, device: torch.device, progress: bool):
    """Index tensors [<=bs] of a fresh seeded permutation each epoch; the last batch may be short."""
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
        yield from perm.split(bs)


@torch.no_grad()
def train_heads(
    x: Tensor, y: Tensor, hparams: list[tuple[float, float]], num_classes: int, cfg: LinearConfig, seed: int,
    progress: bool = False,
) -> Tensor:
    """Trains one softmax-regression head per (lr, weight_decay) pair, all at once.

    x: [N, D+1] standardised features with a trailing 1-column (bias); y: [N] int64.
    Returns W: [G*C, D+1] where rows g*C:(g+1)*C are head g (last column: biases). Heads start
    at zero, so the only randomness is the mini-batch order, fixed by `seed`.
    """
    n, d1 = x.shape
    c, g = num_classes, len(hparams)
    lr_row = torch.tensor([h[0] for h in hparams], device=x.device).repeat_interleave(c)[:, None]  # [G*C, 1]
    wd = torch.tensor([h[1] for h in hparams], device=x.device).repeat_interleave(c)[:, None].repeat(1, d1)
    wd[:, -1] = 0.0  # no decay on the biases; wd: [G*C, D+1]
    w = x.new_zeros(g * c, d1)  # [G*C, D+1]
    buf = torch.zeros_like(w)  # SGD momentum, or AdamW first moment
    sq = torch.zeros_like(w) if cfg.optimizer == "adamw" else None  # AdamW second moment
    onehot_t = torch.eye(c, device=x.device)  # column y of it is the one-hot of class y
    bs = min(cfg.batch_size, n)
    # Gathering into one reused buffer is ~2x faster on CPU than a fresh multi-MB tensor per step.
    x_buf = x.new_empty(bs, d1)
    total, step = cfg.epochs * math.ceil(n / bs), 0
    m = cfg.momentum
    batches = _batches(n, bs, cfg.epochs, seed, x.device, progress)
    with _cpu_threads(x.device, g * c * d1 * bs):
        for idx in batches:
            xb = torch.index_select(x, 0, idx, out=x_buf[: idx.numel()])  # [B, D+1]
            yb = y.index_select(0, idx)  # [B]
            # Logits kept class-major, [G, C, B]: the softmax then reduces over a short strided
            # dim with long contiguous rows, and both matmuls have the batch as their long side;
            # on CPU 3-4x faster than the [B, G, C] layout (C = 10 is too short to vectorise).
            p = (w @ xb.T).view(g, c, -1).softmax(1)
            p.sub_(onehot_t.index_select(1, yb)).div_(xb.shape[0])  # d(mean CE)/d(logits) = softmax - onehot
            grad = p.view(g * c, -1) @ xb  # [G*C, D+1]
            lr = lr_row * cosine_schedule(1.0, 0.0, step / total)  # cosine to 0, per step
            step += 1
            if sq is None:  # SGD, Nesterov momentum, L2 penalty folded into the gradient
                grad.addcmul_(wd, w)
                buf.mul_(m).add_(grad)
                w.sub_(grad.add_(buf, alpha=m).mul_(lr))
            else:  # AdamW (Loshchilov & Hutter 2019): decay decoupled from the adaptive step
                buf.mul_(m).add_(grad, alpha=1 - m)
                sq.mul_(0.999).addcmul_(grad, grad, value=0.001)
                denom = (sq / (1 - 0.999**step)).sqrt_().add_(1e-8)
                w.sub_(w * wd * lr)
                w.sub_(buf / denom * (lr / (1 - m**step)))
    return w


def _evaluate(x: Tensor, y: Tensor, w: Tensor, g: int, c: int, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-head top-1 (%) and mean cross-entropy. x: [M, D+1], w: [G*C, D+1].

    Chunked so that a grid of heads over many classes (5 x 1000) does not need M x G x C at once.
    """
    hits, nll = torch.zeros(g, dtype=torch.long, device=w.device), w.new_zeros(g)
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        logp = (xc @ w.T).view(-1, g, c).log_softmax(-1)  # [m, G, C]
        hits += (logp.argmax(-1) == yc[:, None]).sum(0)
        nll -= logp.gather(2, yc.view(-1, 1, 1).expand(-1, g, 1)).sum((0, 2))
    return [100.0 * h / len(y) for h in hits.tolist()], (nll / len(y)).tolist()


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


@torch.no_grad()
def linear_probe(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    cfg: LinearConfig = LinearConfig(),
    num_classes: int | None = None,
    seed: int = 0,
    progress: bool = False,
    features: str | None = None,
) -> dict:
    """Linear-probe accuracy (%) on cached features, hyper-parameters chosen on held-out train.

    Args:
        train_f: [N, D] training features; all work runs on their device.
        train_y: [N] int64 labels.
        test_f: [M, D] test features; test_y: [M] int64 labels.
        cfg: optimisation and search settings (`LinearConfig`).
        num_classes: default max label + 1 over train and test.
        seed: fixes the validation split and the mini-batch order (heads start at zero).
        progress: show a tqdm bar per training run.
        features: optional description of where the features came from, added to "protocol".

    Returns:
        {"top1", "top5" (if num_classes >= 5), "train_top1", "lr", "weight_decay",
         "val_top1" (of the chosen pair), "held_out" (images held out), "search" (every
         pair's held-out top-1 and loss) -- these three only when searching -- and "protocol"}.
    """
    _check(train_f, train_y, test_f, test_y, "linear_probe")
    cfg.validate()
    c = _num_classes(num_classes, train_y, test_y)
    device = train_f.device
    train_y, test_y = train_y.to(device), test_y.to(device)
    cands = cfg.candidates()
    result: dict = {}

    search = len(cands) > 1 and cfg.val_fraction > 0
    lr, wd = cands[0] if len(cands) == 1 else (cfg.peak_lr(), cfg.weight_decay)
    if search:
        val_idx, fit_idx = stratified_subset(train_y, seed, fraction=cfg.val_fraction)
        if len(fit_idx) == 0 or len(val_idx) == 0:
            raise ValueError(
                f"linear_probe: val_fraction={cfg.val_fraction} leaves {len(fit_idx)} fit / {len(val_idx)} "
                f"held-out examples of {len(train_y)}; use a larger training set or val_fraction=0"
            )
        x_fit, x_val = _standardise(train_f[fit_idx], train_f[val_idx])
        w = train_heads(x_fit, train_y[fit_idx], cands, c, cfg, seed, progress)
        acc, loss = _evaluate(x_val, train_y[val_idx], w, len(cands), c)
        # Best held-out top-1; among equals (common on small held-out sets) the lower loss.
        best = max(range(len(cands)), key=lambda i: (acc[i], -loss[i]))
        lr, wd = cands[best]
        result["val_top1"], result["held_out"] = acc[best], len(val_idx)
        result["search"] = [
            {"lr": h[0], "weight_decay": h[1], "val_top1": a, "val_loss": l} for h, a, l in zip(cands, acc, loss)
        ]

    x_train, x_test = _standardise(train_f, test_f)
    w = train_heads(x_train, train_y, [(lr, wd)], c, cfg, seed, progress)
    result = {**topk_accuracy(x_test @ w.T, test_y), "train_top1": _evaluate(x_train, train_y, w, 1, c)[0][0],
              "lr": lr, "weight_decay": wd, **result}

    opt = "SGD (Nesterov, momentum %g)" % cfg.momentum if cfg.optimizer == "sgd" else "AdamW"
    grids = sorted({h[1] for h in cands}), sorted({h[0] for h in cands})
    chosen = (
        f"weight decay from {_fmt(grids[0])}"
        + (f" and lr from {_fmt(grids[1])}" if len(grids[1]) > 1 else "")
        + f" chosen by top-1 on a stratified, seeded ({seed}) {cfg.val_fraction:g} held-out slice of train "
        f"({result['held_out']} images), then retrained on all of train"
        if search else "no hyper-parameter search"
    )
    result["protocol"] = (
        f"linear probe: features standardised with train mean/std, one linear layer, cross-entropy, {opt}, "
        f"lr={lr:g}, weight_decay={wd:g}, cosine schedule, {cfg.epochs} epochs, batch {cfg.batch_size}; "
        f"{chosen}; train={len(train_y)} test={len(test_y)}, dim={train_f.shape[1]}, classes={c}"
        + (f", features: {features}" if features else "")
    )
    return result
