"""Data sources -> ImageSet: one uint8 [N, C, H, W] tensor, optional labels and class names.

    from selfsup.data import load_dataset
    train = load_dataset("cifar10", "train")          # a name, looked up in the data root
    pics = load_dataset("~/photos.tar.gz", image_size=64)  # or a path

Readers: cifar.py (CIFAR-10/100 pickles, CIFAR-10 JPEG tree), idx.py (MNIST, Fashion-MNIST),
stl10.py, folder.py (image folders and tars, with tarstream.py and labelfile.py), npz.py,
digits.py (offline default), captions.py (image-caption folders and tars, with texts; captions
made from class names). Decoded image folders are cached by cache.py; roots.py says where
data is looked for. check_same_classes guards an evaluation against a test split whose labels
mean something else.
"""

from .captions import TEMPLATES, templated
from .imageset import (
    DataError,
    DataWarning,
    ImageSet,
    check_same_classes,
    dataset_stats,
)
from .registry import known_datasets, load_dataset
from .roots import cache_root, data_root

__all__ = [
    "TEMPLATES",
    "DataError",
    "DataWarning",
    "ImageSet",
    "cache_root",
    "check_same_classes",
    "data_root",
    "dataset_stats",
    "known_datasets",
    "load_dataset",
    "templated",
]
