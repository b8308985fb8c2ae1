"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1,797 images): the one
dataset that needs no download, for offline smoke runs and tests."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .imageset import ImageSet
from .roots import LoadRequest

TEST_FRACTION = 0.2
SEED = 0
SPLITS = ("train", "test", "all")


def split_indices(
    labels: np.ndarray, fraction: float = TEST_FRACTION, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split: each class contributes round(fraction * its count) test
    images. Written out here rather than taken from sklearn so it stays fixed across versions."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: int(round(fraction * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


@lru_cache(maxsize=1)
def _all() -> tuple[np.ndarray, np.ndarray]:
    # Kept after the first call: tests and smoke runs load digits many times, and importing
    # scikit-learn takes seconds.
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # Pixel values are counts 0..16; spread them over the uint8 range.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64)


def load_digits(req: LoadRequest) -> ImageSet:
    req.check_split("digits", SPLITS)
    images, labels = _all()
    if req.split == "all":
        idx = np.arange(len(labels))
    else:
        train_idx, test_idx = split_indices(labels)
        idx = train_idx if req.split == "train" else test_idx
    # Fancy indexing copies, so callers may modify the set without touching the kept arrays.
    return ImageSet(images[idx], labels[idx], [str(i) for i in range(10)], "digits")
