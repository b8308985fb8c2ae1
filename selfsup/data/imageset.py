"""The in-memory dataset every part of selfsup consumes: one uint8 tensor plus optional labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfsup.errors import SelfsupError


class DataError(SelfsupError):
    """A dataset could not be found or read; the message names the files, keys or paths involved."""


class DataWarning(UserWarning):
    """Something in a dataset was skipped (e.g. corrupt images); loading went on without it."""


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's RGB -> "L"


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] with `channels` channels: grey repeated to RGB, RGB to grey by ITU-R 601
    luma (Pillow's "L"), anything else refused. The one mapping used wherever an encoder meets
    images of the other kind (transfer, zero-shot, the Python API)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"images with {c} channels for an encoder of {channels}")


def channel_mapping(c: int, channels: int) -> str:
    """The words of `match_channels` for a protocol line."""
    if c == channels:
        return ""
    return ("grey repeated to 3 channels" if c == 1 else "RGB to grey by ITU-R 601 luma")


@dataclass(repr=False, eq=False)
class ImageSet:
    """A whole dataset split held as one tensor, so that batches are gathered on the device
    with a single index operation instead of per-image Python.

    images: uint8 [N, C, H, W], C is 1 or 3, contiguous.
    labels: int64 [N], or None for unlabelled data.
    classes: class names, index = label (None when unknown or unlabelled).
    name: the dataset's name, for logs and reports.
    texts: for image-text data, the captions of each image ([N] lists of one or more strings;
        None for images alone). Tokenised for a method by selfsup/data/text.py.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    name: str = ""
    texts: list[list[str]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise DataError(
                f"ImageSet {self.name!r}: images must be uint8 [N, C, H, W] with C 1 or 3, "
                f"got {self.images.dtype} {list(self.images.shape)}"
            )
        self.images = self.images.contiguous()
        if self.labels is not None:
            if isinstance(self.labels, np.ndarray):
                self.labels = torch.from_numpy(self.labels)
            if self.labels.dim() != 1 or len(self.labels) != len(self.images):
                raise DataError(
                    f"ImageSet {self.name!r}: labels must be [N] with N={len(self.images)}, "
                    f"got {list(self.labels.shape)}"
                )
            if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
                raise DataError(f"ImageSet {self.name!r}: labels must be integers, got {self.labels.dtype}")
            self.labels = self.labels.to(torch.int64)
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
        if self.texts is not None and (len(self.texts) != len(self.images)
                                       or not all(t and all(isinstance(c, str) for c in t) for t in self.texts)):
            raise DataError(f"ImageSet {self.name!r}: texts must hold one or more captions (strings) "
                            f"for each of the {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        # The default dataclass repr would print the whole tensor.
        shape = list(self.images.shape[1:])
        return (
            f"ImageSet(name={self.name!r}, n={len(self)}, shape={shape}, "
            f"num_classes={self.num_classes}, device={self.images.device})"
        )

    @property
    def num_classes(self) -> int:
        """len(classes) when names are known, else labels.max()+1; 0 for unlabelled data."""
        if self.classes is not None:
            return len(self.classes)
        if self.labels is None or len(self.labels) == 0:
            return 0
        return int(self.labels.max().item()) + 1

    def to(self, device: torch.device | str) -> ImageSet:
        labels = self.labels.to(device) if self.labels is not None else None
        return ImageSet(self.images.to(device), labels, self.classes, self.name, self.texts)

    def subset(self, indices) -> ImageSet:
        """The images at `indices` (a sequence, array or tensor of ints, or a boolean mask)."""
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(device=self.images.device, dtype=torch.int64)
        labels = self.labels[idx] if self.labels is not None else None
        texts = [self.texts[i] for i in idx.tolist()] if self.texts is not None else None
        return ImageSet(self.images[idx], labels, self.classes, self.name, texts)


def check_same_classes(train: ImageSet, test: ImageSet, train_what: str, test_what: str) -> None:
    """Refuse a test split whose labels do not mean what the training split's labels mean, so
    that an evaluation on it cannot quietly score 0 %. `train_what` / `test_what` name the splits
    in the message (e.g. "data.train_split 'train' of /data/pets").

    Passes when both splits are unlabelled (there is nothing to compare), and when both are
    labelled with the same class list (same names, same order), every label of each lies in that
    list, and every class that has test images has training images too. A class of the list
    with no test images is fine. When either split has no class names (labels only, e.g. an
    .npz without them), the lists are not compared; the rest is. Raises DataError otherwise:
    one split labelled and the other not, class lists that differ, or a class with test images
    but no training images. Call it with the whole training split, before taking a subset of
    it, or a rare class may be missing from the subset.
    """
    if train.labels is None and test.labels is None:
        return
    if train.labels is None or test.labels is None:
        has, lacks = (test_what, train_what) if train.labels is None else (train_what, test_what)
        raise DataError(f"{has} is labelled but {lacks} is not, so the test labels cannot be "
                        f"compared with the training classes")
    for ds, what in ((train, train_what), (test, test_what)):
        if ds.classes is not None and len(ds.labels) and not (
                0 <= int(ds.labels.min()) and int(ds.labels.max()) < len(ds.classes)):
            raise DataError(f"{what} has labels outside its {len(ds.classes)} classes")
    if train.classes is not None and test.classes is not None and train.classes != test.classes:
        extra = [c for c in test.classes if c not in train.classes]
        missing = [c for c in train.classes if c not in test.classes]
        why = (f"{test_what} has class(es) {_names(extra)} that {train_what} lacks" if extra else
               f"{test_what} lacks class(es) {_names(missing)} of {train_what}" if missing else
               "they list the same classes in a different order")
        raise DataError(f"{test_what} and {train_what} have different class lists: {why}")
    seen = set(train.labels.unique().tolist())
    extra = sorted(set(test.labels.unique().tolist()) - seen)
    if extra:
        names = [train.classes[k] if train.classes and 0 <= k < len(train.classes) else str(k) for k in extra]
        raise DataError(f"{test_what} has images of {len(extra)} class(es) that {train_what} has no "
                        f"images of: {_names(names)}")


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(repr(n) for n in names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def dataset_stats(ds: ImageSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, for input normalisation.

    Sums are accumulated chunk by chunk in int64, which is exact (255**2 * 2**40 still fits),
    so the result does not depend on the chunk size and no float copy of the whole set is made.
    """
    n = len(ds)
    if n == 0:
        raise DataError(f"dataset_stats: ImageSet {ds.name!r} is empty")
    c = ds.images.shape[1]
    chunk = max(1, (1 << 22) // ds.images[0].numel())  # ~16 MB of int32 per step
    total = torch.zeros(c, dtype=torch.int64, device=ds.images.device)
    total_sq = torch.zeros(c, dtype=torch.int64, device=ds.images.device)
    for start in range(0, n, chunk):
        x = ds.images[start : start + chunk].to(torch.int32)
        total += x.sum(dim=(0, 2, 3), dtype=torch.int64)
        total_sq += (x * x).sum(dim=(0, 2, 3), dtype=torch.int64)
    count = n * ds.images.shape[2] * ds.images.shape[3]
    mean = total.cpu().double() / count
    var = (total_sq.cpu().double() / count - mean * mean).clamp_min(0.0)
    return (mean / 255.0).tolist(), (var.sqrt() / 255.0).tolist()
