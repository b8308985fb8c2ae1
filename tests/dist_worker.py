"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU)."""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import tiny_config
import selfsup.train.feed as feed
import selfsup.train.trainer as trainer_module
from selfsup.data.shards import write_shards
from selfsup.distributed import gather_with_grad, init_distributed, rank, world_size
from selfsup.losses import nt_xent
from selfsup.methods import METHODS
from selfsup.parts.queue import FeatureQueue
from selfsup.train.trainer import Trainer


def gathered_loss_matches_single_process() -> dict:
    w, r, b = world_size(), rank(), 4
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(w, b, 8, generator=g)
    z2 = torch.randn(w, b, 8, generator=g)
    mine1, mine2 = z1[r].clone().requires_grad_(), z2[r].clone().requires_grad_()
    z_all = gather_with_grad(F.normalize(torch.cat([mine1, mine2]), dim=1))
    loss, _ = nt_xent(mine1, mine2, 0.2, z_all, offset=r * 2 * b)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(w)]
    dist.all_gather(losses, loss.detach())
    # Reference in one process: every rank's anchors against the same global batch.
    ref1, ref2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref_all = torch.cat([F.normalize(torch.cat([ref1[q], ref2[q]]), dim=1) for q in range(w)])
    ref = torch.stack([nt_xent(ref1[q], ref2[q], 0.2, ref_all, offset=q * 2 * b)[0]
                       for q in range(w)]).mean()
    ref.backward()
    # DDP averages gradients over ranks, so a rank's gradient / W is its share of d(mean)/dz.
    return {"loss": abs(torch.stack(losses).mean().item() - ref.item()),
            "grad": max((mine1.grad / w - ref1.grad[r]).abs().max().item(),
                        (mine2.grad / w - ref2.grad[r]).abs().max().item())}


def queue_holds_every_ranks_keys() -> bool:
    """Rank r pushes 3 keys filled with r: every rank's queue then holds rank 0's, then rank 1's."""
    q = FeatureQueue(size=8, dim=2)
    q.push(torch.full((3, 2), float(rank())))
    expected = torch.cat([torch.full((3, 2), float(r)) for r in range(world_size())])
    return bool(torch.equal(q.features[: 3 * world_size()], expected)) and int(q.ptr) == 6


def cross_rank_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and the buffers that must agree across ranks (queues, centres, pointers): all
    buffers but BatchNorm's running statistics, which stay per rank (broadcast_buffers=False)."""
    per_rank = ("running_mean", "running_var", "num_batches_tracked")
    state = dict(module.named_parameters())
    state.update((n, b) for n, b in module.named_buffers() if not n.endswith(per_rank))
    return state


def train_every_method(out: Path) -> dict:
    """Each registered method trains a quarter of an epoch (6 steps) on 2 ranks; returns, per method, each compared
    tensor's sum on every rank and whether it changed during training."""
    results = {}
    for method in sorted(METHODS):
        cfg = tiny_config(method, "trainer.epochs=0.25", "trainer.knn_every=0", "trainer.threads=1",
                          f"trainer.out={out}")
        trainer = Trainer(cfg, run_dir=out / method)
        before = {k: v.detach().clone() for k, v in cross_rank_state(trainer.model).items()}
        trainer.fit()
        after = cross_rank_state(trainer.model)
        compared = {}
        for name, value in after.items():
            sums = [torch.zeros((), dtype=torch.float64) for _ in range(world_size())]
            dist.all_gather(sums, value.detach().double().sum())
            compared[name] = {"sums": [s.item() for s in sums],
                              "changed": not torch.equal(before[name], value)}
        results[method] = {"state": compared, "steps": trainer.step,
                           "steps_per_epoch": trainer.steps_per_epoch,
                           "encoder": (out / method / "encoder.safetensors").exists()}
    return results


def train_from_shards(out: Path) -> dict:
    """SimCLR for one epoch on PNG shards of the digits, each rank with one decoding worker
    process: the image indices every rank's loader yielded, the steps, and the weights' sums."""
    folder = out / "digit-shards"
    if rank() == 0:
        write_shards("digits", folder, per_shard=100, progress=False)
    dist.barrier()
    seen, real = [], feed.load_batches

    def recording(*args, **kwargs):  # the real loader's batches, their indices noted on the way
        batches = real(*args, **kwargs)
        try:
            for x, ids in batches:
                seen.extend(ids.tolist())
                yield x, ids
        finally:
            batches.close()

    feed.load_batches = recording
    try:
        cfg = tiny_config("simclr", "trainer.epochs=1", "trainer.knn_every=0", "trainer.threads=1",
                          f"data.name={folder}", "data.workers=1", f"trainer.out={out}")
        trainer = Trainer(cfg, run_dir=out / "from-shards")
        trainer.fit()
    finally:
        feed.load_batches = real
    every = [None] * world_size()
    dist.all_gather_object(every, {"seen": seen, "weights": sum(p.double().sum().item() for p in
                                                                 trainer.model.parameters())})
    return {"seen": [e["seen"] for e in every], "weights": [e["weights"] for e in every],
            "steps": trainer.step, "steps_per_epoch": trainer.steps_per_epoch}


def train_to_budget(out: Path) -> dict:
    """SimCLR with a 1.2-second budget (trainer.minutes) where rank 1's clock runs twice as fast:
    alone it would stop at about half rank 0's steps; both ranks' last steps."""
    cfg = tiny_config("simclr", "trainer.epochs=20", "trainer.minutes=0.02", "trainer.log_every=2",
                      "trainer.knn_every=-1", "trainer.threads=1", f"trainer.out={out}")
    trainer = Trainer(cfg, run_dir=out / "budget")
    asked = trainer.total_steps
    clock = trainer_module.time
    if rank() == 1:
        zero = time.perf_counter()
        trainer_module.time = SimpleNamespace(perf_counter=lambda: zero + 2 * (time.perf_counter() - zero))
    try:
        trainer.fit()
    finally:
        trainer_module.time = clock
    every = [None] * world_size()
    dist.all_gather_object(every, trainer.step)
    return {"steps": every, "asked": asked}


def main(out: Path) -> None:
    init_distributed(torch.device("cpu"))
    errors = gathered_loss_matches_single_process()
    queue_ok = queue_holds_every_ranks_keys()
    methods = train_every_method(out)
    shards = train_from_shards(out)
    budget = train_to_budget(out)
    if rank() == 0:
        (out / "result.json").write_text(json.dumps({
            **errors, "queue_ok": queue_ok, "world": world_size(), "methods": methods, "shards": shards,
            "budget": budget}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
