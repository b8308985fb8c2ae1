"""iGPT speed: training tokens/s, and sampling tokens/s with and without the key/value cache.

    python benchmarks/bench_igpt.py                      # the quick recipe's model, CPU, fp32 and bf16
    python benchmarks/bench_igpt.py --device cuda --size 32 --depth 24 --width 512 --heads 8

Builds an iGPT of the given size with a palette fitted to random pixels (speed does not depend
on the palette's colours), then times (a) training steps (autoregressive loss, backward, AdamW)
on batches of `--batch` images of `--size`^2 tokens, and (b) completing the bottom half of
`--sample-batch` images, token by token, with the cache (each step feeds one token) and without
it (each step recomputes the whole sequence), in each precision of `--precisions` (bf16 only
where the device supports it: CPUs with avx512_bf16 or AMX, GPUs). Prints the CPU's model and
flags and one table: tokens/s and the ratio to the first precision's row of the same work, and
for sampling the ratio to no cache; the timed work is repeated `--rounds` times and the median kept.
"""

import argparse
import statistics
import time

import torch

from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.device import autocast, describe_device, resolve_precision
from selfsup.methods.igpt import IGPT, IGPTConfig
from selfsup.protocol import Progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16, help="image side: size^2 tokens a sequence")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--palette", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps a round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()

    device = torch.device(args.device)
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    precisions = [p for p in wanted if p == "fp32" or resolve_precision("auto", device) == "bf16"]
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="igpt_s", embed_dim=args.width, depth=args.depth,
                                       num_heads=args.heads, palette_size=args.palette), 3, args.size)
    bb.palette.build(torch.randn(20 * args.palette, 3), seed=0)
    model = IGPT(IGPTConfig(), bb).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    prefix = bb.tokenize(x[: args.sample_batch])[:, : bb.seq_len // 2]
    new_tokens = args.sample_batch * (bb.seq_len - prefix.shape[1])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, tokens):
        fn()  # warm-up: allocator, kernels
        sync()
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return tokens / statistics.median(times)

    rates = {}
    for precision in precisions:
        def train():
            for _ in range(args.steps):
                with autocast(device, precision):
                    loss = model([x], Progress(0, 1, 1)).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def sample(cache):
            def run():
                with autocast(device, precision):
                    model.complete(prefix, torch.Generator(device=device).manual_seed(0), cache=cache)
            return run

        rates[("training", precision)] = timed(train, args.steps * args.batch * bb.seq_len)
        for cache in (True, False):
            rates[(f"sampling, {'KV cache' if cache else 'no cache'}", precision)] = timed(sample(cache), new_tokens)

    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"iGPT {args.depth} blocks x {args.width} ({args.heads} heads), {bb.seq_len} tokens "
          f"({args.size}x{args.size}), palette {args.palette}, {params:.1f}M parameters; {describe_device(device)}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} rounds")
    skipped = sorted(set(wanted) - set(precisions))
    if skipped:
        print(f"(not measured: {', '.join(skipped)}, which this device does not run natively)")
    base = precisions[0]
    print(f"| work | precision | tokens/s | vs {base} | vs no cache |")
    print("| --- | --- | --- | --- | --- |")
    for (work, precision), rate in rates.items():
        no_cache = rates.get(("sampling, no cache", precision))
        ratio = f"{rate / no_cache:.1f}x" if work.startswith("sampling") else ""
        print(f"| {work} | {precision} | {rate:,.0f} | {rate / rates[(work, base)]:.2f}x | {ratio} |")


if __name__ == "__main__":
    main()
