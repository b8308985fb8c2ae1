"""Masked image modelling: the encoder's step time against the mask ratio.

    python benchmarks/bench_mask.py                               # ViT-Tiny/4 at 32 px, CPU
    python benchmarks/bench_mask.py --depth 6 --batch 256         # the quick recipes' encoder
    python benchmarks/bench_mask.py --device cuda --batch 512 --backbone vit_small

MAE's encoder sees only the visible patches (He et al. 2021 §3), so its cost should fall about
in proportion to the visible share (attention, quadratic in the tokens, falls faster). For each
mask ratio this times a forward + backward of the encoder alone on the visible patches, and of
a whole MAE step (encoder, decoder over all positions, loss, AdamW step), and prints both as a
ratio to mask ratio 0. The ratios are measured round-robin (ratio 0, 0.5, ... then again) and
the median of the rounds is kept, so that load from other processes falls on all ratios alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.device import autocast, resolve_precision
from selfsup.protocol import Progress
from selfsup.views.masks import num_visible, random_order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="vit_tiny")
    ap.add_argument("--depth", type=int, default=None, help="blocks (default: the size's own)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--ratios", default="0,0.5,0.75,0.9")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per ratio per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = ap.parse_args()

    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name=args.backbone, patch_size=args.patch,
                                             depth=args.depth), 3, args.size).to(device)
    model = MAE(MAEConfig(decoder_dim=128, decoder_depth=2, decoder_heads=4), backbone).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    L = (args.size // args.patch) ** 2
    ratios = [float(r) for r in args.ratios.split(",")]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def encoder_step(ratio):
        keep = random_order(args.batch, L, g, device)[:, : num_visible(L, ratio)]
        with autocast(device, precision):
            out = backbone.forward_tokens(x, keep=keep)
        out.float().pow(2).mean().backward()

    def mae_step(ratio):
        model.cfg.mask_ratio = ratio
        views = model.prepare([x], g)
        with autocast(device, precision):
            loss = model(views, Progress(0, 1, 1)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {(kind, r): [] for kind in ("encoder", "mae") for r in ratios}
    for kind, fn in (("encoder", encoder_step), ("mae", mae_step)):
        for r in ratios:  # warm-up: oneDNN primitives for each token count
            fn(r)
        for _ in range(args.rounds):
            for r in ratios:
                sync()
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn(r)
                sync()
                times[(kind, r)].append((time.perf_counter() - start) / args.steps)
        backbone.zero_grad(set_to_none=True)

    print(f"{args.backbone} (depth {len(backbone.blocks)}, width {backbone.dim}) over "
          f"{args.patch}x{args.patch} patches of {args.size} px ({L} patches), batch {args.batch}, "
          f"{device.type} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {precision}; median of "
          f"{args.rounds} rounds of {args.steps} steps\n")
    print("| mask ratio | visible patches | encoder fwd+bwd | vs ratio 0 | MAE step | vs ratio 0 |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = {k: statistics.median(times[(k, ratios[0])]) for k in ("encoder", "mae")}
    for r in ratios:
        enc, mae = (statistics.median(times[(k, r)]) for k in ("encoder", "mae"))
        print(f"| {r:g} | {num_visible(L, r)} | {enc * 1e3:.0f} ms | {enc / base['encoder']:.2f}x "
              f"| {mae * 1e3:.0f} ms | {mae / base['mae']:.2f}x |")


if __name__ == "__main__":
    main()
