"""Streaming shards into the same uint8 batches the in-memory path gives, in an order a checkpoint
can recover from the step alone.

The order of an epoch is a pure function of (the shards' image counts, seed, epoch, rank, world
size, workers, buffer), computed from the index without reading an image (`rank_plan`):
    1. the shards are permuted by (seed, epoch);
    2. rank r takes shards r, r + world, ...; its worker k takes every workers-th of those, so no
       two readers ever open the same shard within an epoch;
    3. each worker reads its shards in that order, image after image, through a shuffle buffer
       of `buffer` images (WebDataset's shuffle: each incoming image replaces a random one of the
       buffer, which is emitted), and cuts what comes out into batches;
    4. the rank's batches take the workers in turn, so the DataLoader's worker k decodes exactly
       the batches of its own shards.
Every epoch has the same number of steps (`steps_per_epoch`): what the rank whose workers drew the
fewest images can fill. Images past it in an epoch wait for the next (a different shard order
leaves different ones out); with one rank and one worker it is len // batch, as in memory.

Each image is decoded to a fixed size (`size`) in the worker: with crop scale (1, 1) by the
in-memory readers' own function (shorter side resized, centre crop), so that the pixels equal a
folder read with data.image_size; otherwise a random-resized crop of the drawn area range,
decoded at reduced size first where JPEG allows (PIL's draft mode decodes at 1/2, 1/4 or 1/8 in
the DCT). The crop's draw depends on (seed, epoch, image) only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .decode import decode, to_array
from .imageset import DataError
from .shards import ShardSplit, channels_first

_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as PIL's exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def buffer_shuffle(ids: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """`ids` in the order a shuffle buffer of `buffer` items emits them: each incoming item
    replaces a random one of the full buffer, which goes out; at the end the rest, permuted."""
    n = len(ids)
    if buffer <= 1 or n <= 1:
        return ids.copy()
    held = ids[:buffer].tolist()
    picks = rng.integers(0, len(held), max(0, n - len(held))).tolist()
    out = []
    for new, j in zip(ids[len(held):].tolist(), picks):
        out.append(held[j])
        held[j] = new
    out.extend(held[i] for i in rng.permutation(len(held)))
    return np.array(out, dtype=np.int64)


def rank_plan(counts: Sequence[int], seed: int, epoch: int, rank: int, world: int, workers: int,
              buffer: int) -> list[np.ndarray]:
    """Per worker of `rank`, the image numbers it reads in `epoch`, in order (module docstring)."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    order = _rng(seed, epoch, 0x5EED).permutation(len(counts))
    mine = order[rank::world]
    streams = []
    for k in range(workers):
        shards = mine[k::workers]
        ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards]) if len(shards) else \
            np.zeros(0, np.int64)
        streams.append(buffer_shuffle(ids, buffer, _rng(seed, epoch, rank, k, 0xB0FF)))
    return streams


def steps_per_epoch(counts: Sequence[int], world: int, workers: int, batch: int) -> int:
    """Steps every rank can fill in any epoch: each worker holds at least `len(counts) // (world *
    workers)` shards, in the worst case the smallest ones."""
    readers = world * workers
    per_reader = len(counts) // readers
    if per_reader == 0:
        raise DataError(f"{len(counts)} shard(s) for {world} process(es) x {workers} worker(s): every "
                        f"reader needs a shard of its own; write smaller shards (selfsup shards "
                        f"--shard-size) or set fewer data.workers")
    least = sum(sorted(counts)[:per_reader])
    return workers * (least // batch)


def epoch_batches(counts: Sequence[int], seed: int, epoch: int, rank: int, world: int, workers: int,
                  buffer: int, batch: int) -> np.ndarray:
    """[steps_per_epoch, batch] image numbers of `rank`'s batches in `epoch`: worker k's
    batches at steps k, k + workers, ..."""
    steps = steps_per_epoch(counts, world, workers, batch)
    streams = rank_plan(counts, seed, epoch, rank, world, workers, buffer)
    per_worker = steps // workers
    cut = [s[: per_worker * batch].reshape(per_worker, batch) for s in streams]
    return np.stack(cut, 1).reshape(steps, batch)  # [per_worker, workers, batch] -> in turns


def crop_box(w: int, h: int, scale: Sequence[float], ratio: Sequence[float],
             rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A random-resized-crop box (left, top, right, bottom) of a w x h image: area a fraction in
    `scale` of the image's, aspect ratio log-uniform in `ratio`; after 10 misses the centre crop
    of the nearest allowed ratio (Szegedy et al. 2015's crop, as torchvision draws it)."""
    area = w * h
    logr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*logr))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return left, top, left + cw, top + ch
    r = w / h
    cw, ch = (w, w / ratio[0]) if r < ratio[0] else (h * ratio[1], h) if r > ratio[1] else (w, h)
    left, top = (w - cw) / 2, (h - ch) / 2
    return left, top, left + cw, top + ch


def decode_crop(data: bytes, fmt: str, size: int, scale: Sequence[float], ratio: Sequence[float],
                rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] of `size` x `size`: a random-resized crop (`crop_box`) of the
    encoded image, upright."""
    import io

    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        w, h = img.size
        box = crop_box(w, h, scale, ratio, rng)
        orientation = img.getexif().get(_ORIENTATION, 1) if "exif" in img.info else 1
        if fmt == "JPEG":  # decode at the smallest DCT scale that keeps the crop at least `size`
            img.draft(img.mode if img.mode in ("L", "RGB") else None,
                      (math.ceil(w * size / (box[2] - box[0])), math.ceil(h * size / (box[3] - box[1]))))
        sx, sy = img.size[0] / w, img.size[1] / h
        out = img.resize((size, size), Image.BILINEAR,
                         box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    if orientation in _UPRIGHT:
        out = out.transpose(_UPRIGHT[orientation])
    return to_array(out)


class BatchTasks(torch.utils.data.Dataset):
    """Item j: (uint8 [B, C, size, size], image numbers [B]) of `batches[j]`, decoded with the
    split's channels (or `channels`). scale None: whole images (shorter side, centre crop);
    else the random-resized crop drawn from (seed, epoch, image number)."""

    def __init__(self, split: ShardSplit, batches: np.ndarray, size: int, channels: int,
                 scale: Sequence[float] | None = None, ratio: Sequence[float] = (3 / 4, 4 / 3),
                 seed: int = 0, epoch: int = 0):
        self.split, self.batches, self.size, self.channels = split, batches, size, channels
        self.scale, self.ratio, self.seed, self.epoch = scale, ratio, seed, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def image(self, i: int) -> np.ndarray:
        if self.scale is None:
            a = self.split.pixels(i, lambda data, fmt: decode(data, fmt, self.size))
        else:
            rng = _rng(self.seed, self.epoch, i, 0xC409)
            a = self.split.pixels(i, lambda data, fmt: decode_crop(data, fmt, self.size, self.scale,
                                                                  self.ratio, rng))
        return channels_first(a, self.channels)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor] | DataError:
        ids = self.batches[j]
        out = np.empty((len(ids), self.channels, self.size, self.size), np.uint8)
        try:
            for n, i in enumerate(ids.tolist()):
                out[n] = self.image(i)
        except DataError as e:  # handed over as a value: raised in a worker, it would arrive
            return e            # wrapped in the worker's traceback
        return torch.from_numpy(out), torch.from_numpy(np.asarray(ids, np.int64))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding needs no torch threads; the cores belong to the training process


def load_batches(tasks: BatchTasks, start: int = 0, workers: int = 0,
                 pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The items of `tasks` from `start` on, in order, decoded by `workers` processes (0: here)."""
    loader = torch.utils.data.DataLoader(
        tasks, batch_size=None, sampler=range(start, len(tasks)), num_workers=workers,
        pin_memory=pin, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None)
    for item in loader:
        if isinstance(item, DataError):
            raise item
        yield item


class StreamImages:
    """The images of a `ShardSet` as the feature extractor reads them: uint8 [N, C, size, size]
    in shape only, decoded whole (shorter side, centre crop) a chunk at a time by `workers`
    processes, in order (`chunks`), never all in memory; a few at a time by indexing."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, split: ShardSplit, ids: np.ndarray, size: int, channels: int, workers: int):
        self.split, self.ids, self.size, self.channels, self.workers = split, ids, size, channels, workers

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.ids), self.channels, self.size, self.size))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        batches = [self.ids[s: s + batch_size] for s in range(0, len(self.ids), batch_size)]
        tasks = BatchTasks(self.split, batches, self.size, self.channels)
        for x, _ in load_batches(tasks, workers=min(self.workers, len(batches))):
            yield x

    def __getitem__(self, idx) -> torch.Tensor:
        pick = np.atleast_1d(np.asarray(idx.cpu() if torch.is_tensor(idx) else idx))
        if pick.dtype == bool:
            pick = pick.nonzero()[0]
        x, _ = BatchTasks(self.split, [self.ids[pick]], self.size, self.channels)[0]
        return x[0] if np.ndim(idx) == 0 else x


class ShardSet:
    """A split of shards where an `ImageSet` is expected by the evaluators: labels, classes and
    name in memory; `images` streamed (`StreamImages`) at `size` with `channels`."""

    texts = None

    def __init__(self, split: ShardSplit, size: int, channels: int | None = None,
                 ids: np.ndarray | None = None, workers: int = 0):
        self.split, self.size, self.workers = split, size, workers
        self.channels = channels or split.channels
        self.ids = np.arange(len(split)) if ids is None else np.asarray(ids, np.int64)
        self.labels = split.labels[torch.from_numpy(self.ids)] if split.labels is not None else None
        self.classes = split.classes
        self.name = split.name
        self.images = StreamImages(split, self.ids, size, self.channels, workers)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ShardSet(name={self.name!r}, n={len(self)}, size={self.size}, channels={self.channels})"

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def subset(self, indices) -> ShardSet:
        pick = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
        if pick.dtype == bool:
            pick = pick.nonzero()[0]
        return ShardSet(self.split, self.size, self.channels, self.ids[pick], self.workers)

    def to(self, device) -> ShardSet:
        return self  # images are decoded where they are read; features go to the device


def open_shards(folder, split: str, size: int | None = None, channels: int | None = None,
                workers: int = 0) -> ShardSet:
    """A split of a shards folder as a ShardSet decoded at `size` (default: the shards' size, when
    all their images are one square size) with `channels` (default: the shards')."""
    s = ShardSplit(folder, split)
    if size is None:
        if s.size is None or s.size[0] != s.size[1]:
            shown = "various sizes" if s.size is None else "x".join(map(str, s.size[::-1]))
            raise DataError(f"data.image_size: the images of split {split!r} of {s.folder} are not one "
                            f"square size ({shown}); set the size the stream decodes them to")
        size = s.size[0]
    return ShardSet(s, size, channels, workers=workers)
