"""The checks of a config that need more than one of its sections at once: the method built
around the backbone and fed the views. `build_config` runs them, so that `selfsup config`
refuses what `selfsup pretrain` would, before any data is read."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.config import Config, view_configs
from selfsup.errors import ConfigError
from selfsup.protocol import hook, method_inputs, param_sets
from selfsup.views import build_view_set


def check_model(cfg: Config, in_channels: int = 3) -> nn.Module:
    """Build the method once and make its inputs for two blank images, without a step, so that
    what only the combination can refuse (a method that needs a ViT given a ResNet, a patch size
    or a puzzle that does not fit the view size, a layer the backbone lacks, a parameter set the
    method lacks) is refused now, before any data is read. It is a real build on
    the CPU (up to a second for the largest backbones: the meta device would be free, but parts
    that compute and cache real values when built, such as jigsaw's permutation sets, cannot run
    there), with the global random state saved and restored. Returns the built model."""
    from selfsup.train.trainer import build_model  # the trainer imports config: import here

    what = f"method.name={cfg.method.name} with backbone.name={cfg.backbone.name}"
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg, in_channels)
            # A method's pretext inputs (tiles, masks, tokens' targets) from two blank images:
            # a geometry that does not fit the view size fails here, not at the first step.
            views = build_view_set(view_configs(cfg), [0.5] * in_channels, [0.25] * in_channels)
            blank = torch.zeros(2, in_channels, cfg.views.size, cfg.views.size, dtype=torch.uint8)
            make = hook(model, "make_tokenizer")  # image-text methods: two captions too
            texts = make([["a"], ["b"]]).encode([["a"], ["b"]]) if make else ()
            method_inputs(model, views, blank, torch.Generator().manual_seed(0), texts=texts)
    except ConfigError:
        raise
    except (ValueError, KeyError, ZeroDivisionError) as e:
        raise ConfigError(f"{what} and views.size={cfg.views.size}: {e}") from None
    try:
        names = [s.name for s in param_sets(model)]
    except ValueError as e:
        raise ConfigError(f"method.name={cfg.method.name}: {e}") from None
    unknown = sorted(set(cfg.trainer.param_sets) - set(names))
    if unknown:
        raise ConfigError(f"trainer.param_sets.{unknown[0]}: {cfg.method.name} has the parameter "
                          f"set(s) {', '.join(names)}")
    layers = list(getattr(model.backbone, "layer_names", []))
    if cfg.eval.layer not in (None, "all", *layers):
        raise ConfigError(f"eval.layer={cfg.eval.layer!r} is not a layer of {cfg.backbone.name}; "
                          f"choose all or one of {', '.join(layers)}")
    return model
