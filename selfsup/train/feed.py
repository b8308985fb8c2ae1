"""Where the trainer's batches come from: images held in memory (`MemoryFeed`) or shards streamed
from disk (`StreamFeed`, selfsup/data/stream.py). Both give a rank's uint8 batch of any step,
a few training images for pictures and codebooks, and the settings a checkpoint must record for
the resumed run to see the same images in the same order.
"""

from __future__ import annotations

import hashlib

import torch

from selfsup.config import Config, ConfigError
from selfsup.data import ImageSet, check_same_classes
from selfsup.data.stream import BatchTasks, ShardSet, epoch_batches, load_batches, open_shards, steps_per_epoch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch))


class MemoryFeed:
    """Batches gathered from uint8 images in memory (on the device where they fit): step i of an
    epoch takes the rank's slice of the i-th global batch of a seeded permutation."""

    def __init__(self, train: ImageSet, texts: list[torch.Tensor], store: torch.device,
                 device: torch.device, seed: int, rank: int, local_batch: int, batch_size: int):
        self.images = train.images.to(store)
        self.texts, self.device, self.seed = texts, device, seed
        self.rank, self.local_batch, self.batch_size = rank, local_batch, batch_size
        self.steps_per_epoch = len(train) // batch_size
        self._perm = (-1, None)

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The training images at `idx` (uint8 [B, C, H, W] on the device) and, for an image-text
        method, their caption tokens [B, K, T] and which exist [B, K]."""
        idx = idx.to(self.images.device)
        texts = [t[idx].to(self.device, non_blocking=True) for t in self.texts]
        return self.images[idx].to(self.device, non_blocking=True), texts

    def batch(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The rank's uint8 [b, C, H, W] on the device at `step`, and its caption tokens."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(len(self.images), self.seed, epoch))
        lo = i * self.batch_size + self.rank * self.local_batch
        return self.gather(self._perm[1][lo: lo + self.local_batch])

    def pick(self, n: int, seed: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """`n` training images drawn with `seed`, in batches of at most the local batch."""
        pick = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:n]
        return [self.gather(idx) for idx in pick.split(self.local_batch)]

    def state(self) -> dict:
        return {}

    def check(self, state: dict) -> None:
        if state:
            raise ConfigError(f"the checkpoint was trained from shards ({state.get('source')}); "
                              f"this run reads its data into memory")

    def close(self) -> None:
        pass


class StreamFeed:
    """Batches streamed from shards in the order `selfsup.data.stream` plans from (seed, epoch,
    rank): a new loader at each epoch, and at any step that is not the next one (a resume)."""

    def __init__(self, train: ShardSet, cfg: Config, device: torch.device, rank: int, world: int,
                 local_batch: int):
        d = cfg.data
        self.train, self.device, self.rank, self.world = train, device, rank, world
        self.local_batch, self.seed = local_batch, cfg.trainer.seed
        self.workers, self.buffer, self.scale = d.workers, d.shuffle_buffer, d.decode_crop
        self.counts = train.split.counts
        self.steps_per_epoch = steps_per_epoch(self.counts, world, max(1, self.workers), local_batch)
        self._next, self._it = -1, None

    def _start(self, step: int):
        epoch, i = divmod(step, self.steps_per_epoch)
        batches = epoch_batches(self.counts, self.seed, epoch, self.rank, self.world, max(1, self.workers),
                                self.buffer, self.local_batch)
        tasks = BatchTasks(self.train.split, batches, self.train.size, self.train.channels,
                           self.scale, seed=self.seed, epoch=epoch)
        return load_batches(tasks, i, self.workers, pin=self.device.type == "cuda")

    def batch(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if step != self._next or step % self.steps_per_epoch == 0:
            self.close()
            self._it = self._start(step)
        x, _ = next(self._it)
        self._next = step + 1
        return x.to(self.device, non_blocking=True), []

    def pick(self, n: int, seed: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        pick = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))[:n]
        return [(self.train.images[idx].to(self.device), []) for idx in pick.split(self.local_batch)]

    def state(self) -> dict:
        """What fixes the stream's order besides the step: the shards (by their checksums), and
        how many ranks and workers read them with what buffer and crop."""
        shards = hashlib.sha256("".join(self.train.split.sha256).encode()).hexdigest()
        return {"source": str(self.train.split.folder), "split": self.train.split.split, "shards": shards,
                "world": self.world, "workers": max(1, self.workers), "shuffle_buffer": self.buffer,
                "decode_crop": self.scale, "local_batch": self.local_batch, "size": self.train.size}

    def check(self, state: dict) -> None:
        """A ConfigError naming what differs from the stream the checkpoint was trained on."""
        now = self.state()
        keys = {"world": "the number of processes", "workers": "data.workers",
                "shuffle_buffer": "data.shuffle_buffer", "decode_crop": "data.decode_crop",
                "local_batch": "trainer.batch_size per process", "size": "data.image_size",
                "shards": "the shards (their checksums)", "split": "data.train_split"}
        diff = [f"{keys[k]}: {state.get(k)!r} then, {now[k]!r} now" for k in keys if state.get(k) != now[k]]
        if diff:
            raise ConfigError(f"the checkpoint streamed other data or in another order ({'; '.join(diff)}); "
                              f"resume with the settings it was trained with")

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None


def prepare_shards(cfg: Config, need_test: bool = False):
    """(train, test, mean, std) of a run on a shards folder (data.name): ShardSets streamed at
    data.image_size (`open_shards`), the test split where the manifest has it and the training
    split is labelled (or `need_test`), and the statistics the manifest holds."""
    d = cfg.data
    for key, value in (("subset", d.subset), ("caption_templates", d.caption_templates)):
        if value is not None:
            raise ConfigError(f"data.{key}={value!r} is not available for shards ({d.name}): "
                              f"write the shards from what you want to train on")
    train = open_shards(d.name, d.train_split, d.image_size, d.channels, d.workers)
    split, channels = train.split, train.channels
    test = None
    if d.test_split and (train.labels is not None or need_test):
        test = open_shards(d.name, d.test_split, train.size, channels, d.workers)
        check_same_classes(train, test, f"data.train_split={d.train_split!r} of {d.name}",
                           f"data.test_split={d.test_split!r}")
    mean, std = split.mean, split.std
    if channels != split.channels:  # as the pixels are mapped (grey repeated; RGB to luma: approximate)
        from selfsup.data.imageset import LUMA

        mean, std = ((mean * 3, std * 3) if channels == 3 else
                     ([sum(w * m for w, m in zip(LUMA, mean))], [sum(w * s for w, s in zip(LUMA, std))]))
    return train, test, mean, std
