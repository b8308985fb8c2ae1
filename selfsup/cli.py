"""The `selfsup` command: pretrain an encoder, evaluate it, list recipes.

    selfsup pretrain --recipe quick trainer.epochs=5
    selfsup pretrain --resume runs/quick-20261122-101500
    selfsup eval knn runs/quick-20261122-101500 eval.knn.k=20
    selfsup eval linear runs/quick-20261122-101500
    selfsup eval knn,linear runs/quick-20261122-101500      # features extracted once for both
    selfsup eval finetune runs/quick-20261122-101500 --recipe finetune_quick_cifar10
    selfsup eval finetune runs/quick-20261122-101500 --random-init      # the baseline
    selfsup recipes
    selfsup config --recipe cifar10_simclr trainer.batch_size=256

Overrides are `section.key=value` (OmegaConf dotted keys); unknown keys and ill-typed values are
refused with a message naming the key.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def _pretrain(args) -> int:
    from selfsup.run import find_run_dir, load_run_config
    from selfsup.train.trainer import Trainer

    if args.resume:
        run_dir = find_run_dir(args.resume)
        cfg = load_run_config(run_dir, args.overrides)
        trainer = Trainer(cfg, run_dir=run_dir)
        if not trainer.resume():
            print(f"{run_dir} has no checkpoint yet: starting from step 0", file=sys.stderr)
    else:
        if _is_finetune_recipe(recipe_path(args.recipe)):
            raise ConfigError(f"{args.recipe} is a fine-tune recipe: use it as "
                              f"selfsup eval finetune RUN --recipe {args.recipe}")
        cfg = load_config(args.recipe, args.overrides)
        trainer = Trainer(cfg, run_dir=args.run_dir, recipe=Path(args.recipe).stem)
    run_dir = trainer.fit()
    print(f"run folder: {run_dir}")
    return 0


def _evaluate(args) -> int:
    import dataclasses

    import torch

    from selfsup.backbones import build_backbone
    from selfsup.config import build_config
    from selfsup.data import dataset_stats, load_dataset
    from selfsup.device import resolve_device, resolve_precision
    from selfsup.eval.features import FeatureCache
    from selfsup.eval.finetune import finetune
    from selfsup.eval.protocols import PROTOCOLS, evaluate
    from selfsup.run import find_run_dir, load_encoder
    from selfsup.runfolder import RunFolder

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    known = [*PROTOCOLS, "finetune"]
    bad = [p for p in protocols if p not in known]
    if bad or not protocols:
        raise ConfigError(f"eval: unknown protocol {','.join(bad) or args.protocol!r}; choose from "
                          f"{', '.join(known)}, or several joined by commas (knn,linear)")
    run_dir = find_run_dir(args.run)
    run = RunFolder(run_dir)
    # The run's config, then a recipe's overrides (e.g. a fine-tune recipe), then the command line.
    recipe = [recipe_path(args.recipe)] if args.recipe else []
    cfg = build_config(run.config, *recipe, list(args.overrides))
    d = cfg.data
    train = load_dataset(d.name, d.train_split, root=d.root, image_size=d.image_size)
    if train.labels is None:
        raise ConfigError(f"data {d.name!r} split {d.train_split!r} has no labels to evaluate with")
    if not d.test_split:
        raise ConfigError("data.test_split is null: name a labelled split to test on")
    test = load_dataset(d.name, d.test_split, root=d.root, image_size=d.image_size)
    mean, std = run.read_stats() or dataset_stats(train)
    device = resolve_device(cfg.trainer.device)
    in_channels = train.images.shape[1]
    if args.random_init:
        # The pretraining run's starting point: the trainer seeds with trainer.seed and then
        # builds the backbone first, so this is the same network before any training.
        torch.manual_seed(cfg.trainer.seed)
        backbone = build_backbone(cfg.backbone, in_channels=in_channels, image_size=cfg.views.size)
    else:
        backbone = load_encoder(args.run, cfg, in_channels)
    backbone = backbone.to(device)
    precision = resolve_precision(cfg.trainer.precision, device)
    size = cfg.eval.size or cfg.views.size
    weights = "random init (trainer.seed %d)" % cfg.trainer.seed if args.random_init else str(args.run)
    frozen = [p for p in protocols if p != "finetune"]
    cache = FeatureCache(backbone, mean, std, batch_size=cfg.eval.batch_size, device=device,
                         precision=precision, progress=True)
    results = evaluate(cache, train, test, cfg.eval, frozen, size=size, progress=True)
    if "finetune" in protocols:  # last: it changes the backbone's weights
        fcfg = cfg.eval.finetune
        fcfg = dataclasses.replace(fcfg, size=fcfg.size or size,
                                   flip_p=cfg.views.flip_p if fcfg.flip_p is None else fcfg.flip_p)
        results["finetune"] = finetune(backbone, train, test, mean, std, fcfg, device=device,
                                       precision=precision, progress=True, description=weights)
    for protocol in protocols:
        res = results[protocol]
        print(f"{protocol} top-1: {res['top1']:.2f}%  ({res['protocol']})")
        out = run.eval_result(protocol, args.random_init)
        out.write_text(json.dumps({**res, "weights": weights, "recipe": args.recipe}, indent=2,
                                  default=str))
        print(f"written: {out}")
    return 0


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
    return 0


def _config(args) -> int:
    print(to_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train an encoder with a self-supervised method")
    p.add_argument("--recipe", "-r", default="quick", help="shipped recipe name or YAML path")
    p.add_argument("--run-dir", help="run folder (default: trainer.out/<recipe>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a run from its latest checkpoint")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser("eval", help="evaluate a trained encoder: k-NN, linear probe, fine-tuning")
    e.add_argument("protocol", help="knn | linear | finetune, or several joined by commas "
                   "(knn,linear: features are extracted once for both)")
    e.add_argument("run", help="run folder, checkpoint folder, or .safetensors inside a run")
    e.add_argument("--recipe", "-r", help="YAML of overrides applied over the run's config, e.g. "
                   "finetune_quick_cifar10 (see selfsup recipes)")
    e.add_argument("--random-init", action="store_true", help="the run's backbone without its "
                   "weights (the baseline); writes eval_<protocol>_random.json")
    e.add_argument("overrides", nargs="*", help="key.sub=value, e.g. eval.knn.k=20 eval.layer=layer3 "
                   "eval.finetune.epochs=10")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser("recipes", help="list the shipped recipes")
    r.set_defaults(func=_recipes)

    c = sub.add_parser("config", help="print a recipe's resolved configuration")
    c.add_argument("--recipe", "-r", default="quick")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=_config)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    # Overrides may follow an option (`eval finetune RUN --random-init a.b=c`); argparse would
    # have closed the positional list at the option, so the rest are taken back here.
    args, rest = ap.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(r.startswith("-") for r in rest):
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    try:
        return args.func(args)
    except Exception as e:  # the errors a user can act on get one line, not a traceback
        from selfsup.data import DataError
        from selfsup.train.step import TrainingDiverged

        if isinstance(e, (ConfigError, DataError, FileNotFoundError, TrainingDiverged)):
            print(f"selfsup: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("\nselfsup: interrupted; resume with: selfsup pretrain --resume <run folder>",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
