"""The evaluation protocols on a frozen backbone, from images to a stated top-1. They read their
features from one `FeatureCache`, so features are extracted once per split, layer and size and
shared by every protocol of an invocation (k-NN and the linear probe of the same encoder, say).

Which features: the pooled backbone output (default), one layer's pooled output (`eval.layer`),
every layer's in turn (`eval.layer=all`), or DCGAN's pooled multi-layer feature (`eval.pool=g`:
every layer max-pooled to g x g and concatenated, selfsup/eval/features.py). With eval.pool the
linear probe is the paper's "regularised linear classifier" (§5.1: an L2-SVM there; here
softmax regression with weight decay chosen on a held-out slice)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from selfsup.eval.features import FeatureCache
from selfsup.eval.fewshot import fewshot_probe
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe


def _described(ecfg, backbone=None) -> str:
    pool = ecfg.pool
    if pool is not None:
        names = ", ".join(getattr(backbone, "layer_names", ()))
        return (f"every layer ({names}) max-pooled to {pool}x{pool}, flattened and concatenated "
                f"(eval.pool={pool}, DCGAN §5.1)")
    return f"{ecfg.layer} output, pooled" if ecfg.layer else "pooled backbone output"


def _features(cache: FeatureCache, train, test, ecfg, size):
    """Features of the labelled `train` and `test` ImageSets at `ecfg.layer` (None: pooled), or
    the pooled multi-layer feature with `ecfg.pool`, resized to `size` when it differs from the
    stored size (the training view size by default: a ViT's patch grid and a CNN's receptive
    fields were trained at it)."""
    pool = ecfg.pool
    tr = cache.features(train.images, ecfg.layer, size, pool=pool)
    te = cache.features(test.images, ecfg.layer, size, pool=pool)
    return tr, train.labels.to(tr.device), te, test.labels.to(tr.device)


def knn_eval(cache: FeatureCache, train, test, ecfg, size: int | None = None,
             progress: bool = False, seed: int = 0) -> dict:
    """Weighted k-NN top-1 of `test` against the features of `train` (`ecfg.knn`)."""
    tr, tr_y, te, te_y = _features(cache, train, test, ecfg, size)
    k = ecfg.knn
    return knn_accuracy(tr, tr_y, te, te_y, k=k.k, temperature=k.temperature,
                        num_classes=train.num_classes, chunk_size=k.chunk_size,
                        features=_described(ecfg, cache.backbone))


def linear_eval(cache: FeatureCache, train, test, ecfg, size: int | None = None,
                progress: bool = False, seed: int = 0) -> dict:
    """Linear-probe top-1 on the cached features of `train`, tested on `test` (`ecfg.linear`)."""
    tr, tr_y, te, te_y = _features(cache, train, test, ecfg, size)
    return linear_probe(tr, tr_y, te, te_y, cfg=ecfg.linear, num_classes=train.num_classes,
                        seed=seed, progress=progress, features=_described(ecfg, cache.backbone))


def fewshot_eval(cache: FeatureCache, train, test, ecfg, size: int | None = None,
                 progress: bool = False, seed: int = 0) -> dict:
    """Linear probes on class-balanced few-label subsets of `train` (`ecfg.fewshot`,
    selfsup/eval/fewshot.py), from the same cached features as the full probes."""
    tr, tr_y, te, te_y = _features(cache, train, test, ecfg, size)
    return fewshot_probe(tr, tr_y, te, te_y, cfg=ecfg.fewshot, linear=ecfg.linear,
                         num_classes=train.num_classes, features=_described(ecfg, cache.backbone))


PROTOCOLS = {"knn": knn_eval, "linear": linear_eval, "fewshot": fewshot_eval}


def every_layer(protocol: str, cache: FeatureCache, train, test, ecfg, size: int | None = None,
                progress: bool = False, seed: int = 0) -> dict:
    """`protocol` on each of the backbone's `layer_names`, from one feature pass per split (every
    layer extracted together): {"top1" and "best_layer" of the best layer, "layers": [{"layer",
    "depth", **that layer's result}] in depth order, "protocol"}."""
    names = list(cache.backbone.layer_names)
    for images in (train.images, test.images):
        cache.layers(images, names, size)
    rows = [{"layer": name, "depth": i, **PROTOCOLS[protocol](
        cache, train, test, dataclasses.replace(ecfg, layer=name), size, progress, seed)}
        for i, name in enumerate(names)]
    best = max(rows, key=lambda r: r["top1"])
    first = rows[0]["protocol"].rsplit(", features:", 1)[0]
    return {"top1": best["top1"], "best_layer": best["layer"], "layers": rows,
            "protocol": f"{first}; at every layer of {type(cache.backbone).__name__} "
                        f"({', '.join(names)}), each layer's output pooled"}


def evaluate(cache: FeatureCache, train, test, ecfg, protocols: Sequence[str],
             size: int | None = None, progress: bool = False, seed: int = 0) -> dict[str, dict]:
    """{protocol: result} for each of `protocols` (names in PROTOCOLS), on one feature cache;
    with `ecfg.layer` "all", each result is `every_layer`'s; with `ecfg.pool`, on the pooled
    multi-layer feature."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; have {', '.join(PROTOCOLS)}")
    if ecfg.pool is not None and ecfg.layer is not None:
        raise ValueError(f"eval.pool={ecfg.pool} takes every layer: eval.layer must be null with it")
    if ecfg.layer == "all":
        return {p: every_layer(p, cache, train, test, ecfg, size, progress, seed) for p in protocols}
    return {p: PROTOCOLS[p](cache, train, test, ecfg, size, progress, seed) for p in protocols}
