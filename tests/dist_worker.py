"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.methods.simclr import nt_xent
from selfsup.train.distributed import gather_with_grad, init_distributed, rank, world_size
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


def main(out: Path) -> None:
    init_distributed(torch.device("cpu"))
    errors = gathered_loss_matches_single_process()
    cfg = load_config("quick", ["backbone.width=0.125", "views.size=16", "trainer.batch_size=64",
                                "trainer.epochs=1", "trainer.progress=false", "trainer.knn_every=0",
                                "method.proj_hidden=32", "method.proj_dim=16", "trainer.threads=1",
                                f"trainer.out={out}"])
    trainer = Trainer(cfg, run_dir=out / "run")
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    sums = [torch.zeros((), dtype=torch.float64) for _ in range(world_size())]
    dist.all_gather(sums, flat.double().sum())
    if rank() == 0:
        (out / "result.json").write_text(json.dumps({
            **errors, "world": world_size(), "param_sums": [s.item() for s in sums],
            "steps": trainer.step, "steps_per_epoch": trainer.steps_per_epoch}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
