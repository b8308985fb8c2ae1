"""The `selfsup` command: pretrain an encoder, evaluate it, list recipes.

    selfsup pretrain --recipe quick trainer.epochs=5
    selfsup pretrain --resume runs/quick-20261122-101500
    selfsup eval knn runs/quick-20261122-101500 eval.knn.k=20
    selfsup eval linear runs/quick-20261122-101500
    selfsup eval knn,linear runs/quick-20261122-101500      # features extracted once for both
    selfsup eval finetune runs/quick-20261122-101500 --recipe finetune_quick_cifar10
    selfsup eval finetune runs/quick-20261122-101500 --random-init      # the baseline
    selfsup eval linear runs/quick-20261122-101500 eval.layer=all       # every layer, one pass
    selfsup eval linear runs/quick-20261122-101500 eval.pool=4          # DCGAN's: layers max-pooled 4x4
    selfsup eval linear runs/quick-20261122-101500 --checkpoints        # loss against probe
    selfsup report runs/quick-20261122-101500                 # RUN/report.html
    selfsup report RUN_A RUN_B -o compare.html                # several runs side by side
    selfsup study target_data_cpu                             # runs + evaluations -> one table
    selfsup export runs/quick-20261122-101500 --format onnx  # or timm
    selfsup recipes
    selfsup config --recipe cifar10_simclr trainer.batch_size=256

Overrides are `section.key=value` (OmegaConf dotted keys); unknown keys and ill-typed values are
refused with a message naming the key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from selfsup.config import RECIPES_DIR, ConfigError, load_config, recipe_path, to_yaml


def _is_finetune_recipe(path: Path) -> bool:
    """A fine-tune recipe (selfsup/recipes/finetune_*.yaml) holds overrides for `selfsup eval
    finetune --recipe`: an eval.finetune section and no method of its own."""
    from omegaconf import OmegaConf

    try:
        y = OmegaConf.load(path)
    except Exception:
        return False
    return "method" not in y and "finetune" in (y.get("eval") or {})


def _pretrain(args) -> Path:
    """`selfsup pretrain`: the run folder it trained."""
    from selfsup import distributed as dist
    from selfsup.run import find_run_dir, load_run_config
    from selfsup.runfolder import RunFolder, default_run_dir
    from selfsup.train.trainer import Trainer

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in its folder and --overwrite replaces it: "
                          "choose one")
    if args.resume:
        run_dir = find_run_dir(args.resume)
        RunFolder(run_dir).check_unlocked()  # before reading any data
        cfg = load_run_config(run_dir, args.overrides)
        trainer = Trainer(cfg, run_dir=run_dir)
        if not trainer.resume():
            print(f"{run_dir} has no usable checkpoint yet: starting from step 0", file=sys.stderr)
    else:
        if _is_finetune_recipe(recipe_path(args.recipe)):
            raise ConfigError(f"{args.recipe} is a fine-tune recipe: use it as "
                              f"selfsup eval finetune RUN --recipe {args.recipe}")
        cfg = load_config(args.recipe, args.overrides)
        t = cfg.trainer
        run = RunFolder(Path(args.run_dir) if args.run_dir else
                        default_run_dir(t.out, t.run_name, Path(args.recipe).stem))
        run.check_unlocked()  # before reading any data; the trainer checks again under the lock
        run.check_new(args.overwrite)
        trainer = Trainer(cfg, run_dir=run.path, overwrite=args.overwrite)
    run_dir = trainer.fit()
    print(f"run folder: {run_dir}")
    if cfg.report.auto and dist.is_main():
        from selfsup.report.page import write_report

        try:
            print(f"report: {write_report([run_dir])}")
        except Exception as e:  # the run is done and intact; the report can be written again
            print(f"selfsup: warning: the report was not written ({type(e).__name__}: {e}); "
                  f"try: selfsup report {run_dir}", file=sys.stderr)
    return run_dir


def _report(args) -> int:
    from selfsup.report.page import write_report

    t = time.perf_counter()
    out = write_report([Path(r) for r in args.runs], Path(args.output) if args.output else None,
                       analyse=not args.no_analysis, progress=True)
    print(f"written: {out} ({time.perf_counter() - t:.1f} s)")
    return 0


def _evaluate(args) -> dict:
    """`selfsup eval`: {protocol: the result it printed and wrote}."""
    import dataclasses

    from selfsup.config import build_config, view_configs
    from selfsup.data import check_same_classes, dataset_stats, load_dataset
    from selfsup.data.imageset import channel_mapping
    from selfsup.data.shards import is_shards
    from selfsup.data.stream import ShardSet, open_shards
    from selfsup.device import resolve_device, resolve_precision
    from selfsup.eval.features import FeatureCache
    from selfsup.eval.finetune import finetune
    from selfsup.eval.protocols import PROTOCOLS, evaluate
    from selfsup.eval.subsets import stratified_subset
    from selfsup.run import find_run_dir, load_encoder, load_method
    from selfsup.runfolder import RunFolder
    from selfsup.train.trainer import with_channels

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    known = [*PROTOCOLS, "finetune", *TEXT_PROTOCOLS]
    bad = [p for p in protocols if p not in known]
    if bad or not protocols:
        raise ConfigError(f"eval: unknown protocol {','.join(bad) or args.protocol!r}; choose from "
                          f"{', '.join(known)}, or several joined by commas (knn,linear)")
    if args.checkpoints and ("finetune" in protocols or args.random_init):
        raise ConfigError("--checkpoints follows the frozen protocols (knn, linear) and includes the "
                          "random init as step 0: not with finetune or --random-init")
    run_dir = find_run_dir(args.run)
    run = RunFolder(run_dir)
    # The run's config, then a recipe's overrides (e.g. a fine-tune recipe), then the command line.
    recipe = [recipe_path(args.recipe)] if args.recipe else []
    cfg = build_config(run.config, *recipe, list(args.overrides))
    if set(protocols) & set(TEXT_PROTOCOLS):
        if not set(protocols) <= set(TEXT_PROTOCOLS) or args.checkpoints or args.random_init:
            raise ConfigError(f"eval: {', '.join(TEXT_PROTOCOLS)} need the trained image-text method and "
                              f"run on their own: not with other protocols, --checkpoints or --random-init")
        return _evaluate_text(args, run, cfg, protocols)
    d, e = cfg.data, cfg.eval.data
    transfer = e.name is not None
    src = e if transfer else d
    key = "eval.data" if transfer else "data"
    root = (e.root or d.root) if transfer else d.root
    def load(split: str):  # a shards folder is streamed, never held in memory as images
        if is_shards(src.name):
            return open_shards(src.name, split, src.image_size, workers=d.workers)
        return load_dataset(src.name, split, root=root, image_size=src.image_size, strict=d.strict)

    train = load(src.train_split)
    if train.labels is None:
        raise ConfigError(f"{key}.name={src.name!r} split {src.train_split!r} has no labels to evaluate with")
    if not src.test_split:
        raise ConfigError(f"{key}.test_split is null: name a labelled split to test on")
    test = load(src.test_split)
    check_same_classes(train, test, f"{key}.train_split={src.train_split!r} of {src.name}",
                       f"{key}.test_split={src.test_split!r}")
    if not transfer:  # the run's own data, with the channels it trained on (data.channels)
        train, test = with_channels(train, d.channels), with_channels(test, d.channels)
    stats = run.read_stats()
    if transfer and stats is None:
        raise ConfigError(f"{run.normalization} is missing: a transfer evaluation needs the "
                          f"normalisation the encoder was trained with")
    mean, std = stats or dataset_stats(train)
    transfer_note = ""
    if transfer:  # the encoder's own channels and evaluation size; said in every protocol line
        channels, c = len(mean), train.images.shape[1]
        mapping = channel_mapping(c, channels)
        train, test = with_channels(train, channels), with_channels(test, channels)
        eval_size = cfg.eval.size or cfg.views.size
        h = test.images.shape[-1]
        transfer_note = (f"; transfer: encoder pretrained on {d.name}, evaluated on {src.name}"
                         + (f", {mapping}" if mapping else "")
                         + (f", {h} px images resized to {eval_size} px" if h != eval_size else ""))
    subsets = {}  # the frozen protocols' subsets (eval.train_subset / test_subset)
    for name, split, n, seed in (("train", train, cfg.eval.train_subset, 0), ("test", test, cfg.eval.test_subset, 1)):
        if n is not None and n < len(split):
            subsets[name] = split.subset(stratified_subset(split.labels, seed, total=n)[0])
            print(f"{name}: a seeded, class-stratified subset of {n} of {len(split)} images")
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    size = cfg.eval.size or cfg.views.size
    in_channels = train.images.shape[1]
    train_set, test_set = subsets.get("train", train), subsets.get("test", test)
    fine_tunes = "finetune" in protocols or ("fewshot" in protocols and cfg.eval.fewshot.finetune)
    if isinstance(train, ShardSet) and fine_tunes:
        raise ConfigError(f"{key}.name={src.name} is shards, which are streamed, and fine-tuning holds its "
                          f"training images in memory: not from shards yet (k-NN, linear and fewshot stream)")
    subset_note = transfer_note + "".join(f"; {name}: a seeded, class-stratified subset of the {name} split"
                                          for name in subsets)
    if args.checkpoints:
        return _track(run, cfg, protocols, train_set, test_set, mean, std, device, precision, size,
                      n_train=min(len(train), cfg.data.subset or len(train)), note=subset_note)
    if "fewshot" in protocols and cfg.eval.fewshot.finetune and cfg.eval.finetune.gen_weight > 0:
        raise ConfigError("eval.fewshot.finetune=true fine-tunes the encoder alone: not with "
                          "eval.finetune.gen_weight > 0")
    gen_weight = cfg.eval.finetune.gen_weight if "finetune" in protocols else 0.0
    method = None
    if gen_weight > 0:
        views = sum(v.n_views for v in view_configs(cfg))
        if views != 1 or args.random_init:
            raise ConfigError(f"eval.finetune.gen_weight={gen_weight:g}: only a trained method whose "
                              f"loss takes one view can add it to fine-tuning ({cfg.method.name} takes "
                              f"{views}{'; not with --random-init' if args.random_init else ''})")
        method = load_method(args.run, cfg, in_channels).to(device)
        backbone = method.backbone
    else:
        backbone = load_encoder(args.run, cfg, in_channels, random_init=args.random_init)
    backbone = backbone.to(device)
    weights = "random init (trainer.seed %d)" % cfg.trainer.seed if args.random_init else str(args.run)
    frozen = [p for p in protocols if p != "finetune"]
    cache = FeatureCache(backbone, mean, std, batch_size=cfg.eval.batch_size, device=device,
                         precision=precision, progress=True)
    results = evaluate(cache, train_set, test_set, cfg.eval, frozen, size=size, progress=True)
    for p in frozen:
        results[p]["protocol"] += subset_note
    fcfg = cfg.eval.finetune
    fcfg = dataclasses.replace(fcfg, size=fcfg.size or size,
                               flip_p=cfg.views.flip_p if fcfg.flip_p is None else fcfg.flip_p)
    if "fewshot" in frozen and cfg.eval.fewshot.finetune:  # copies of the backbone: before finetune
        from selfsup.eval.fewshot import fewshot_finetune

        results["fewshot"]["finetune"] = fewshot_finetune(
            backbone, train_set, test, mean, std, cfg.eval.fewshot, fcfg, device=device,
            precision=precision, progress=True, description=weights)
        results["fewshot"]["finetune"]["protocol"] += transfer_note
    if "finetune" in protocols:  # last: it changes the backbone's weights
        results["finetune"] = finetune(backbone, train, test, mean, std, fcfg, device=device,
                                       precision=precision, progress=True, description=weights,
                                       method=method)
        results["finetune"]["protocol"] += transfer_note
    written = {}
    for protocol in protocols:
        res = written[protocol] = {**results[protocol], "weights": weights, "recipe": args.recipe}
        if "layers" in res:
            _print_layers(protocol, res)
        print(f"{protocol} top-1: {res['top1']:.2f}%  ({res['protocol']})")
        out = run.eval_result(protocol, args.random_init)
        out.write_text(json.dumps(res, indent=2, default=str))
        print(f"written: {out}")
        if "settings" in res:
            _print_fewshot(run, protocol)
        if "layers" in res:
            print(f"written: {_plot_layers(run, protocol, cfg)}")
    return written


TEXT_PROTOCOLS = ("retrieval", "zeroshot")


def _evaluate_text(args, run, cfg, protocols: list[str]) -> dict:
    """Retrieval on the run's held-out image-caption pairs and zero-shot classification of a
    labelled dataset (selfsup/eval/text.py), with the run's method and tokenizer."""
    from selfsup.data import ImageSet, load_dataset
    from selfsup.data.captions import TEMPLATES
    from selfsup.data.imageset import match_channels
    from selfsup.data.text import Tokenizer
    from selfsup.device import resolve_device, resolve_precision
    from selfsup.eval.text import retrieval, zero_shot
    from selfsup.run import load_method
    from selfsup.train.trainer import prepare_data

    if not run.tokenizer.exists():
        raise ConfigError(f"{run.path} has no tokenizer.json: {cfg.method.name} is not an image-text "
                          f"method, so it has no text side to evaluate")
    tokenizer = Tokenizer.from_json(run.tokenizer.read_text(), str(run.tokenizer))
    _, held_out, _, _ = prepare_data(cfg, need_test=True)
    method = load_method(args.run, cfg, held_out.images.shape[1])
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    method = method.to(device)
    mean, std = run.read_stats()
    size = cfg.eval.size or cfg.views.size
    written = {}
    for p in protocols:
        if p == "retrieval":
            res = retrieval(method, tokenizer, held_out, mean, std, size, device, precision)
            for way in ("image_to_text", "text_to_image"):
                cells = ", ".join(f"R@{k} {v:.1f}%" for k, v in res[way].items())
                print(f"{way.replace('_', ' ')}: {cells}")
        else:
            e, d = cfg.eval, cfg.data
            test = held_out if e.zeroshot_data is None else load_dataset(
                e.zeroshot_data, e.zeroshot_split, root=d.root, image_size=d.image_size, strict=d.strict)
            if test.images.shape[1] != held_out.images.shape[1]:  # grey <-> RGB, as the protocol says
                x = match_channels(test.images, held_out.images.shape[1])
                test = ImageSet(x, test.labels, test.classes, test.name)
            templates = e.zeroshot_templates or d.caption_templates or TEMPLATES
            res = zero_shot(method, tokenizer, test, templates, mean, std, size, device, precision)
            print(f"zero-shot top-1: {res['top1']:.2f}% (chance {res['chance']:.1f}%)")
        print(res["protocol"])
        out = run.eval_result(p)
        written[p] = {**res, "weights": str(args.run)}
        out.write_text(json.dumps(written[p], indent=2, default=str))
        print(f"written: {out}")
    return written


def _track(run, cfg, protocols, train, test, mean, std, device, precision, size, n_train, note) -> dict:
    """`--checkpoints`: the held-out pretraining loss and the protocols at the random init and at
    every kept checkpoint (selfsup/eval/track.py); a table, and per protocol a JSON and a plot."""
    from selfsup.eval.plots import plot_track
    from selfsup.eval.track import track
    from selfsup.run import load_method
    from selfsup.train.checkpoint import checkpoints

    points = checkpoints(run.checkpoints)
    if not points:
        raise ConfigError(f"{run.path} has no checkpoint to follow: pretrain with "
                          f"trainer.keep_checkpoints=0 and trainer.checkpoint_every_steps=N")
    if len(points) == 1:
        print(f"warning: {run.path} kept one checkpoint (trainer.keep_checkpoints="
              f"{cfg.trainer.keep_checkpoints}): two points, the random init and it", file=sys.stderr)
    in_channels = train.images.shape[1]

    start = load_method(points[-1], cfg, in_channels, random_init=True)  # step 0, built once

    def load(ckpt):
        return start if ckpt is None else load_method(ckpt, cfg, in_channels)
    res = track(load, points, cfg, train, test, mean, std, protocols, n_train=n_train, device=device,
                precision=precision, size=size, progress=True)
    metrics = [k for k in res["points"][0]["heldout"] if k != "loss"]
    print("| step | epoch | held-out loss | " + " | ".join(metrics + [f"{p} top-1" for p in protocols]) + " |")
    print("| --- " * (3 + len(metrics) + len(protocols)) + "|")
    for r in res["points"]:
        cells = [f"{r['step']}", f"{r['epoch']:.2f}", f"{r['heldout']['loss']:.4f}",
                 *[f"{r['heldout'][m]:.4f}" for m in metrics],
                 *[f"{r[p]['top1']:.2f}%" + (f" ({r[p]['best_layer']})" if "best_layer" in r[p] else "")
                   for p in protocols]]
        print("| " + " | ".join(cells) + " |")
    loss_line = (f"held-out loss: {cfg.method.name}'s pretraining loss on {res['loss_images']} seeded, "
                 f"class-stratified {cfg.data.name} test images, views from a fixed seed, eval mode")
    for p in protocols:
        c = res["correlation"][p]
        corr = ("too few points for a correlation" if c["pearson"] is None else
                f"Pearson r = {c['pearson']:+.3f}, Spearman rho = {c['spearman']:+.3f}")
        print(f"held-out loss against {p} top-1 over {len(res['points'])} points: {corr}")
        rows = [{"step": r["step"], "epoch": r["epoch"], "checkpoint": r["checkpoint"],
                 "heldout": r["heldout"], **r[p]} for r in res["points"]]
        out = run.eval_track(p)
        out.write_text(json.dumps({"points": rows, "correlation": c, "protocol": f"{res['protocol'][p]}"
                                   f"{note}; {loss_line}", "loss_images": res["loss_images"],
                                   "weights": str(run.path)}, indent=2))
        print(f"written: {out}")
        title = (f"{p} top-1 against held-out loss: {cfg.method.name}, {cfg.backbone.name}, {cfg.data.name}"
                 + ("" if c["pearson"] is None else f"\nPearson r = {c['pearson']:+.2f}, Spearman rho = "
                    f"{c['spearman']:+.2f}"))
        ylabel = f"{p} top-1 (%)" + (", best layer" if cfg.eval.layer == "all" else "")
        plotted = [{"step": r["step"], "loss": r["heldout"]["loss"], "top1": r["top1"]} for r in rows]
        print(f"written: {plot_track(plotted, run.eval_track(p, '.png'), title, ylabel)}")
    return {p: json.loads(run.eval_track(p).read_text()) for p in protocols}


def _print_fewshot(run, protocol: str) -> None:
    """The few-label table: this encoder and, where it was measured (`--random-init`), the same
    network at random init, a row each for the probe and (eval.fewshot.finetune) fine-tuning, a
    column per setting (mean ± std over the draws)."""
    rows = []
    for random_init in (False, True):
        path = run.eval_result(protocol, random_init)
        if path.exists():
            try:
                res = json.loads(path.read_text())
            except (OSError, ValueError):
                print(f"selfsup: warning: {path} is damaged; left out of the table", file=sys.stderr)
                continue
            name = "random init" if random_init else "trained"
            rows.append((f"{name}, linear probe", res))
            if isinstance(res.get("finetune"), dict):
                rows.append((f"{name}, fine-tuned", res["finetune"]))
    settings = [s["setting"] for s in rows[0][1].get("settings", [])]
    print("\n| encoder | " + " | ".join(f"{s} ({r['labels']} labels)" for s, r in
                                       zip(settings, rows[0][1]["settings"])) + " |")
    print("| --- " * (1 + len(settings)) + "|")
    for name, res in rows:
        by = {r["setting"]: r for r in res.get("settings", [])}
        cells = [f"{by[s]['mean']:.2f} ± {by[s]['std']:.2f} %" if s in by else "-" for s in settings]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def _print_layers(protocol: str, res: dict) -> None:
    print(f"{protocol} top-1 at every layer:")
    for row in res["layers"]:
        best = "  <- best" if row["layer"] == res["best_layer"] else ""
        print(f"  {row['layer']:>10s}  {row['top1']:6.2f}%{best}")


def _plot_layers(run, protocol: str, cfg) -> Path:
    """RUN/eval_<protocol>_layers.png: the trained encoder's curve and, where it was measured,
    the random-init one (`--random-init`), from the results written in the run folder."""
    from selfsup.data import DataWarning
    from selfsup.eval.plots import plot_layers

    curves = {}
    for random_init, label in ((False, "trained"), (True, "random init")):
        path = run.eval_result(protocol, random_init)
        try:
            rows = json.loads(path.read_text()).get("layers") if path.exists() else None
        except (ValueError, AttributeError):  # a result damaged since: the curve is left out
            warnings.warn(f"{path} is not a result file; its curve is left out of the plot", DataWarning)
            rows = None
        if rows:
            curves[label] = rows
    title = f"{protocol} top-1 by layer: {cfg.method.name}, {cfg.backbone.name}, {cfg.data.name}"
    return plot_layers(curves, run.eval_plot(protocol), title)


def _study(args) -> dict:
    """`selfsup study FILE`: the study's table (selfsup/study.py)."""
    from selfsup.study import run_study

    return run_study(args.study, args.out)


def _export(args) -> Path:
    """`selfsup export RUN --format timm|onnx`: the file written (selfsup/export.py)."""
    from selfsup.export import export

    out = export(args.run, args.format, args.output, overwrite=args.overwrite)
    print(f"written: {out}")
    return out


def _recipes(args) -> int:
    paths = sorted(RECIPES_DIR.glob("*.yaml"))
    finetune = [p for p in paths if _is_finetune_recipe(p)]
    for title, group in (("pretraining (selfsup pretrain --recipe NAME)",
                          [p for p in paths if p not in finetune]),
                         ("fine-tuning (selfsup eval finetune RUN --recipe NAME)", finetune)):
        if group:
            print(f"{title}:")
        for p in group:
            first = next((ln.lstrip("# ").strip() for ln in p.read_text().splitlines()
                          if ln.startswith("#")), "")
            print(f"  {p.stem:24s} {first}")
    from selfsup.study import STUDIES_DIR

    studies = sorted(STUDIES_DIR.glob("*.yaml"))
    if studies:
        print("studies (selfsup study NAME):")
    for p in studies:
        title = next((ln.split(":", 1)[1].strip() for ln in p.read_text().splitlines()
                      if ln.startswith("title:")), "")
        print(f"  {p.stem:24s} {title}")
    return 0


def _shards(args) -> int:
    """`selfsup shards SOURCE OUT`: write shards; `selfsup shards --verify OUT`: check them."""
    from selfsup.data.shards import ShardSplit, read_manifest, write_shards

    if args.verify:
        if len(args.paths) != 1:
            raise ConfigError("shards --verify takes one folder: selfsup shards --verify OUT")
        folder = Path(args.paths[0]).expanduser()
        for split in read_manifest(folder)["splits"]:
            s = ShardSplit(folder, split)
            s.verify()
            print(f"{split}: {len(s)} images in {len(s.files)} shard(s), every checksum as the manifest says")
        return 0
    if len(args.paths) != 2:
        raise ConfigError("shards takes a source and a new folder: selfsup shards SOURCE OUT")
    splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
    if not splits:
        raise ConfigError("--splits is empty: name the splits to write, e.g. train,test")
    source, out = args.paths
    m = write_shards(source, out, splits, args.shard_size, args.image_size, args.format, args.quality,
                     root=args.root, strict=args.strict,
                     optional_splits=("test",) if args.splits == DEFAULT_SPLITS else ())
    for split, s in m["splits"].items():
        size = "x".join(map(str, s["size"][::-1])) if s["size"] else "various sizes"
        total = sum(e["bytes"] for e in s["shards"])
        print(f"{split}: {s['images']} images ({size}, {s['channels']} channel(s)) in {len(s['shards'])} "
              f"shard(s), {total / 2**20:.1f} MiB; {len(s['classes']) if s['classes'] else 'no'} classes"
              + (f"; {s['skipped']} unreadable image(s) skipped" if s["skipped"] else ""))
    print(f"written: {Path(out) / 'manifest.json'}; train on it with data.name={out}")
    return 0


DEFAULT_SPLITS = "train,test"


def _config(args) -> int:
    print(to_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n")[0])
    ap.add_argument("--traceback", action="store_true", help="show the full traceback of every "
                    "error, not only of unexpected ones (or set SELFSUP_TRACEBACK=1)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train an encoder with a self-supervised method")
    p.add_argument("--recipe", "-r", default="quick", help="shipped recipe name or YAML path")
    p.add_argument("--run-dir", help="run folder (default: trainer.out/<recipe>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a run from its newest checkpoint "
                   "that verifies")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a --run-dir that "
                   "holds an earlier run, removing that run's files")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser("eval", help="evaluate a trained encoder: k-NN, linear probe, fine-tuning")
    e.add_argument("protocol", help="knn | linear | fewshot | finetune | retrieval | zeroshot, or "
                   "several joined by commas (knn,linear,fewshot: features are extracted once for all)")
    e.add_argument("run", help="run folder, checkpoint folder, or .safetensors inside a run")
    e.add_argument("--recipe", "-r", help="YAML of overrides applied over the run's config, e.g. "
                   "finetune_quick_cifar10 (see selfsup recipes)")
    e.add_argument("--random-init", action="store_true", help="the run's backbone without its "
                   "weights (the baseline); writes eval_<protocol>_random.json")
    e.add_argument("--checkpoints", action="store_true", help="follow the run: the held-out "
                   "pretraining loss and the protocols at the random init and every kept checkpoint "
                   "(trainer.keep_checkpoints=0), with their correlation; writes "
                   "eval_<protocol>_checkpoints.json and .png")
    e.add_argument("overrides", nargs="*", help="key.sub=value, e.g. eval.knn.k=20 eval.layer=layer3 "
                   "eval.pool=4 eval.finetune.epochs=10")
    e.set_defaults(func=_evaluate)

    rp = sub.add_parser("report", help="a self-contained HTML report of a run, or a comparison of "
                        "several")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s); several give a comparison page")
    rp.add_argument("-o", "--output", help="the HTML file (default: RUN/report.html, or "
                    "./comparison.html for several runs)")
    rp.add_argument("--no-analysis", action="store_true", help="leave out what needs the encoder and "
                    "the data (retrievals, embedding map, attention)")
    rp.set_defaults(func=_report)

    st = sub.add_parser("study", help="run a study (a YAML of pretraining runs and evaluations) to "
                        "completion and write its table and plot; started again, it does only what is missing")
    st.add_argument("study", help="shipped study name (see selfsup recipes) or YAML path")
    st.add_argument("--out", "-o", help="the study's folder (default: studies/<file name>)")
    st.set_defaults(func=_study)

    x = sub.add_parser("export", help="the encoder for other tools: timm-named safetensors or ONNX")
    x.add_argument("run", help="run folder, checkpoint folder, or .safetensors inside a run")
    x.add_argument("--format", "-f", required=True, choices=["timm", "onnx"],
                   help="timm: safetensors with timm's key names and shapes (and its model arguments "
                   "in the metadata); onnx: the encoder as an ONNX graph, images in, pooled features out")
    x.add_argument("--output", "-o", help="the file (default: RUN/export/encoder_timm.safetensors or "
                   "RUN/export/encoder.onnx)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    x.set_defaults(func=_export)

    r = sub.add_parser("recipes", help="list the shipped recipes and studies")
    r.set_defaults(func=_recipes)

    sh = sub.add_parser("shards", help="write a dataset as WebDataset-style tar shards with a manifest "
                        "and index, to stream it in training and evaluation (data.name=OUT)")
    sh.add_argument("paths", nargs="+", metavar="SOURCE OUT", help="a dataset name or path (as "
                    "data.name takes) and a new or empty folder; with --verify, the folder only")
    sh.add_argument("--splits", default=DEFAULT_SPLITS, help="splits to write (default: train,test; "
                    "test left out where the source has none)")
    sh.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    sh.add_argument("--image-size", type=int, help="resize (shorter side, centre crop) and re-encode")
    sh.add_argument("--format", choices=["png", "jpg", "webp"], help="re-encode every image so "
                    "(default: image files kept as they are, array datasets as PNG)")
    sh.add_argument("--quality", type=int, default=90, help="JPEG and WebP quality (default 90)")
    sh.add_argument("--root", help="data root for dataset names (default $SELFSUP_DATA)")
    sh.add_argument("--strict", action="store_true", help="stop at an unreadable image (default: "
                    "skip it, warn, count it in the manifest)")
    sh.add_argument("--verify", action="store_true", help="check every shard of OUT against the "
                    "manifest's checksums")
    sh.set_defaults(func=_shards)

    c = sub.add_parser("config", help="print a recipe's resolved configuration")
    c.add_argument("--recipe", "-r", default="quick")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=_config)
    for command in (p, e, rp, st, x, sh, r, c):  # also accepted after the command
        command.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments (also how selfsup/api.py states its calls)."""
    ap = parser()
    # Overrides may follow an option (`eval finetune RUN --random-init a.b=c`); argparse would
    # have closed the positional list at the option, so the rest are taken back here.
    args, rest = ap.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(r.startswith("-") for r in rest):
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    traceback = args.traceback or os.environ.get("SELFSUP_TRACEBACK", "") not in ("", "0")
    from selfsup.data import DataWarning
    from selfsup.errors import SelfsupError
    from selfsup.train.checkpoint import CheckpointWarning

    shown = warnings.showwarning

    def one_line(message, category, *args, **kwargs):  # ours (skipped images, checkpoints): one line
        if issubclass(category, (DataWarning, CheckpointWarning)):
            print(f"selfsup: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    try:
        result = args.func(args)  # a command's result (the run folder, the evaluations) or a status
        return result if isinstance(result, int) else 0
    except (SelfsupError, OSError) as e:  # what a user can act on: one line, no traceback
        if traceback:
            raise
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselfsup: interrupted; resume with: selfsup pretrain --resume <run folder>",
              file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
