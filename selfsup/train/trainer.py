"""One plain training loop for every method.

uint8 images live on the training device; each step takes a slice of a seeded permutation, makes
the method's views there, and updates each of the method's parameter sets in turn (one set for
most methods; a GAN's discriminator then its generator): loss under autocast, backward, clip,
optimizer step. Then the method's per-step state. The contract with the method is
`selfsup/protocol.py`. The run folder (`selfsup/runfolder.py`) gets the resolved config, metrics,
TensorBoard events, checkpoints and the final encoder weights.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from selfsup import distributed as dist
from selfsup.backbones import build_backbone
from selfsup.config import Config, ConfigError, ParamSetConfig, to_yaml, view_configs
from selfsup.data import ImageSet, check_same_classes, dataset_stats, load_dataset
from selfsup.data.imageset import match_channels
from selfsup.data.shards import is_shards
from selfsup.data.stream import ShardSet
from selfsup.data.text import Tokenizer
from selfsup.device import autocast, describe_device, resolve_device, resolve_precision
from selfsup.eval.features import FeatureCache, frozen_eval
from selfsup.eval.health import embedding_health, verdict
from selfsup.eval.protocols import evaluate
from selfsup.methods import build_method
from selfsup.protocol import Output, Progress, hook, method_inputs, param_sets, set_parameters
from selfsup.runfolder import RunFolder, default_run_dir
from selfsup.schedules import cosine_schedule, warmup_cosine
from selfsup.train.feed import MemoryFeed, StreamFeed, prepare_shards
from selfsup.train.checkpoint import (CheckpointError, CheckpointWarning, checkpoints, latest_checkpoint,
                                      load_checkpoint, remove_partial, save_checkpoint, save_weights,
                                      verify_checkpoint)
from selfsup.train.optim import build_optimizer, param_groups, peak_lr, set_lr
from selfsup.train.pictures import grid_image, save_png
from selfsup.train.runlog import RunLog
from selfsup.train.step import LossWindow, backward_step, check_finite
from selfsup.views import build_view_set


def step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one step on one rank: resuming at any step needs no saved RNG state."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def run_length(n_images: int, epochs: float, batch_size: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run over `n_images` in global batches of
    `batch_size`: the last partial batch of an epoch is dropped; at least one step."""
    steps_per_epoch = n_images // batch_size
    return steps_per_epoch, max(1, round(epochs * steps_per_epoch))


def prepare_data(cfg: Config, need_test: bool = False
                 ) -> tuple[ImageSet, ImageSet | None, list[float], list[float]]:
    """(train, test, mean, std) of the run's data: the test split where the training split is
    labelled (or `need_test`), both captioned from their class names with data.caption_templates,
    the training split cut to data.subset, and its per-channel statistics. A shards folder gives
    streamed sets and the statistics its manifest holds (`selfsup.train.feed.prepare_shards`)."""
    d = cfg.data
    if is_shards(d.name):
        return prepare_shards(cfg, need_test)
    kw = dict(root=d.root, image_size=d.image_size, strict=d.strict, holdout=d.holdout, seed=cfg.trainer.seed)
    train = load_dataset(d.name, d.train_split, download=d.download, **kw)
    test = None
    if d.test_split and (train.labels is not None or need_test):
        test = load_dataset(d.name, d.test_split, **kw)
        check_same_classes(train, test, f"data.train_split={d.train_split!r} of {d.name}",
                           f"data.test_split={d.test_split!r}")  # before the subset: all classes
    if d.caption_templates is not None:
        from selfsup.data.captions import TEMPLATES, templated

        templates = d.caption_templates or TEMPLATES
        train, test = templated(train, templates), test and templated(test, templates)
    if d.subset is not None and d.subset < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.trainer.seed))
        train = train.subset(pick[: d.subset])
    train, test = with_channels(train, d.channels), test and with_channels(test, d.channels)
    mean, std = dataset_stats(train)
    return train, test, mean, std


def with_channels(ds: ImageSet | ShardSet, channels: int | None) -> ImageSet | ShardSet:
    """`ds` with `channels` channels (data.channels; None: as it is), by `match_channels` (a
    ShardSet: decoded with them)."""
    if channels is None or ds.images.shape[1] == channels:
        return ds
    if isinstance(ds, ShardSet):
        return ShardSet(ds.split, ds.size, channels, ds.ids, ds.workers)
    return ImageSet(match_channels(ds.images, channels), ds.labels, ds.classes, ds.name, ds.texts)


def build_model(cfg: Config, in_channels: int, mean: list[float] | None = None,
                std: list[float] | None = None) -> nn.Module:
    """The method of `cfg` around its backbone; mean, std: the training data's normalisation,
    which a colour-input backbone keeps (selfsup/backbones/colour.py)."""
    backbone = build_backbone(cfg.backbone, in_channels=in_channels, image_size=cfg.views.size,
                              mean=mean, std=std)
    return build_method(cfg.method, backbone)


class _SetLoss(nn.Module):
    """What DDP wraps for one parameter set: a module holding exactly the set's parameters (so DDP
    averages their gradients, and only theirs) whose forward is the set's loss."""

    def __init__(self, params: list[nn.Parameter], loss: Callable[..., Output]):
        super().__init__()
        self.params = nn.ParameterList(params)
        self.loss = loss

    def forward(self, views: list[torch.Tensor], progress: Progress) -> Output:
        return self.loss(views, progress)


@dataclass
class OptimizedSet:
    """A parameter set as the trainer runs it: its loss (wrapped for DDP and compile), optimizer,
    resolved settings (every ParamSetConfig field filled) and peak learning rate."""

    name: str
    params: list[nn.Parameter]
    loss: Callable[..., Output]
    optimizer: torch.optim.Optimizer
    settings: ParamSetConfig
    peak_lr: float


class Trainer:
    """A run in the folder `run_dir` (default: `selfsup.runfolder.default_run_dir`). A new run
    refuses a folder that holds another run's files unless `overwrite` (which clears them when
    training starts); call `resume()` before `fit()` to continue the run in the folder instead.
    The folder is locked from `resume()` or `fit()` until the run ends."""

    def __init__(self, cfg: Config, run_dir: Path | None = None, recipe: str = "run",
                 overwrite: bool = False):
        self.cfg = cfg
        t = cfg.trainer
        self.device = resolve_device(t.device)
        dist.init_distributed(self.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.precision = resolve_precision(t.precision, self.device)
        self.run = RunFolder(Path(run_dir) if run_dir else default_run_dir(t.out, t.run_name, recipe))
        self.run_dir = self.run.path
        self.overwrite, self.resumed, self._lock = overwrite, False, None

        self.train_set, self.test_set, self.mean, self.std = prepare_data(cfg)
        self.world = dist.world_size()
        if t.batch_size % self.world:
            raise ConfigError(f"trainer.batch_size={t.batch_size} must divide among {self.world} processes")
        self.local_batch = t.batch_size // self.world
        store = self.device if cfg.data.on_device else torch.device("cpu")

        torch.manual_seed(t.seed)  # same initial weights on every rank, and from run to run
        try:
            self.model = build_model(cfg, self.train_set.images.shape[1], self.mean, self.std).to(self.device)
        except ValueError as e:  # what only the data can refuse (its number of channels)
            raise ConfigError(f"method.name={cfg.method.name} with backbone.name={cfg.backbone.name} "
                              f"on data.name={cfg.data.name}: {e}") from None
        self.tokenizer, texts = self._tokenize(store)
        if isinstance(self.train_set, ImageSet):
            self.feed = MemoryFeed(self.train_set, texts, store, self.device, t.seed, dist.rank(),
                                   self.local_batch, t.batch_size)
        else:
            self.feed = StreamFeed(self.train_set, cfg, self.device, dist.rank(), self.world, self.local_batch)
        self.steps_per_epoch = self.feed.steps_per_epoch
        self.total_steps = max(1, round(t.epochs * self.steps_per_epoch))
        if self.steps_per_epoch == 0:
            raise ConfigError(f"trainer.batch_size={t.batch_size} is larger than the training set "
                              f"({len(self.train_set)} images) can fill")
        if dist.is_distributed() and t.sync_bn and self.device.type == "cuda":
            # BatchNorm statistics over the global batch (SimCLR appendix B.1); GPUs only in torch.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.views = build_view_set(view_configs(cfg), self.mean, self.std)
        self.sets = self._build_sets()
        self.step, self.train_time = 0, 0.0  # training seconds so far, evaluations excluded
        self._aug = torch.Generator(device=self.device)
        self.last_metrics: dict = {}

    def _tokenize(self, store: torch.device) -> tuple[Tokenizer | None, list[torch.Tensor]]:
        """For an image-text method (one with `make_tokenizer`): its tokenizer, fitted to the
        training captions, and their tokens and validity [N, K, T], [N, K] where the images are."""
        make = hook(self.model, "make_tokenizer")
        if make is None:
            return None, []
        if self.train_set.texts is None:
            raise ConfigError(f"method.name={self.cfg.method.name} learns from images and their captions, "
                              f"and data.name={self.cfg.data.name} has none: use a folder or tar with a "
                              f"captions file, or set data.caption_templates=[] to caption a labelled "
                              f"dataset from its class names")
        tokenizer = make(self.train_set.texts)
        return tokenizer, [t.to(store) for t in tokenizer.encode(self.train_set.texts)]

    def _build_sets(self) -> list[OptimizedSet]:
        """The method's parameter sets, each with its optimizer: the trainer's settings, then the
        method's defaults for the set, then the recipe's `trainer.param_sets.<name>`."""
        t = self.cfg.trainer
        try:
            declared = param_sets(self.model)
        except ValueError as e:
            raise ConfigError(f"method.name={self.cfg.method.name}: {e}") from None
        fields = [f.name for f in dataclasses.fields(ParamSetConfig)]
        owner = {id(p): n for n, p in self.model.named_parameters()}
        out = []
        for s in declared:
            bad = sorted(set(s.optim) - set(fields))
            if bad:
                raise ValueError(f"{type(self.model).__name__}: parameter set {s.name!r} sets "
                                 f"{bad}, which are not optimizer settings ({', '.join(fields)})")
            given = t.param_sets.get(s.name, ParamSetConfig())
            settings = ParamSetConfig(**{f: getattr(given, f) if getattr(given, f) is not None
                                         else s.optim.get(f, getattr(t, f)) for f in fields})
            params = set_parameters(s)
            groups = param_groups([(owner[id(p)], p) for p in params], settings.weight_decay,
                                  t.wd_exclude_bias_norm)
            lr = peak_lr(settings.lr, t.batch_size, t.lr_scaling)
            optimizer = build_optimizer(groups, settings.optimizer, lr, momentum=settings.momentum,
                                        betas=settings.betas, lars_trust=t.lars_trust)
            loss = s.loss
            if dist.is_distributed():
                ids = [self.device.index] if self.device.type == "cuda" else None
                # Buffers are not broadcast from rank 0 each step: queues and centres are updated
                # from gathered values on every rank alike, and BN running statistics stay per rank.
                loss = nn.parallel.DistributedDataParallel(_SetLoss(params, s.loss), device_ids=ids,
                                                           broadcast_buffers=False)
            if t.compile:
                loss = torch.compile(loss)
            out.append(OptimizedSet(s.name, params, loss, optimizer, settings, lr))
        return out

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        if not dist.is_main():
            return
        state = {"step": self.step, "total_steps": self.total_steps, "train_time_s": self.train_time,
                 "torch_rng": torch.get_rng_state(), "stream": self.feed.state(),
                 "optimizers": {s.name: s.optimizer.state_dict() for s in self.sets}}
        save_checkpoint(self.run.checkpoints, self.model.state_dict(), state, self.step,
                        keep=self.cfg.trainer.keep_checkpoints)

    def _claim(self) -> None:
        """Lock the run folder (main process) and clear what an interrupted write left; a new
        run also checks that the folder holds no other run, or clears it with `overwrite`."""
        if self._lock is not None or not dist.is_main():
            return
        self._lock = self.run.lock()
        try:
            if not self.resumed:
                self.run.check_new(self.overwrite)
                if self.overwrite:
                    self.run.clear()
            remove_partial(self.run.checkpoints)
            remove_partial(self.run.path)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def resume(self) -> bool:
        """Continue from the run folder's newest checkpoint that verifies (selfsup/train/
        checkpoint.py), warning about each newer one passed over. False if the run has no
        checkpoint yet; a CheckpointError if it has some and none is usable (starting over
        would replace them)."""
        self.resumed = True
        self._claim()
        try:
            found, problems = checkpoints(self.run.checkpoints), []
            for path in reversed(found):
                problem = verify_checkpoint(path)
                if problem is None:
                    try:
                        self._load(path)
                        return True
                    except CheckpointError as e:
                        problem = str(e)
                problems.append(f"{path.name}: {problem}")
                warnings.warn(f"skipped checkpoint {path}: {problem}", CheckpointWarning, stacklevel=2)
            if found:
                raise CheckpointError(f"none of the {len(found)} checkpoint(s) in {self.run.checkpoints} "
                                      f"can be resumed from ({'; '.join(problems)}); start afresh "
                                      f"with --overwrite")
        except BaseException:
            self.release()
            raise
        return False

    def _load(self, path: Path) -> None:
        weights, state = load_checkpoint(path, verify=False)
        self.feed.check(state.get("stream", {}))
        try:
            self.model.load_state_dict(weights)
            for s in self.sets:
                s.optimizer.load_state_dict(state["optimizers"][s.name])
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"does not fit this run's {self.cfg.method.name} with "
                                  f"{self.cfg.backbone.name} (were the settings changed since?): "
                                  f"{str(e).splitlines()[0][:200]}") from None
        self.step = int(state["step"])
        self.train_time = float(state.get("train_time_s", 0.0))
        if self.cfg.trainer.minutes is not None:  # a budgeted run's length as it was last estimated
            self.total_steps = int(state.get("total_steps", self.total_steps))

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, protocols: tuple[str, ...] = ("knn",)) -> dict[str, dict] | None:
        """{protocol: result} of the backbone as it is now, by `selfsup.eval.protocols` on one
        feature cache: the labelled training images (at most `trainer.knn_bank` of them) against
        the test split; and "health": the test features' collapse signals (selfsup/eval/health.py).
        None without a labelled test split, and on ranks other than 0."""
        if self.test_set is None or not dist.is_main():
            return None
        t, e = self.cfg.trainer, self.cfg.eval
        bank = self.train_set
        if t.knn_bank is not None and t.knn_bank < len(bank):
            pick = torch.randperm(len(bank), generator=torch.Generator().manual_seed(t.seed + 1))
            bank = bank.subset(pick[: t.knn_bank])
        cache = FeatureCache(self.model.backbone, self.mean, self.std, batch_size=e.batch_size,
                             device=self.device, precision=self.precision)
        size = e.size or self.cfg.views.size
        results = evaluate(cache, bank, self.test_set, e, protocols, size=size, seed=t.seed)
        results["health"] = embedding_health(cache.features(self.test_set.images, None, size))
        return results

    # -- the loop ----------------------------------------------------------------------------
    def progress(self) -> Progress:
        return Progress(self.step, self.steps_per_epoch, self.total_steps)

    def set_schedules(self) -> float:
        """Learning rate (and weight decay, if scheduled) of the current step for every set;
        returns the first set's learning rate."""
        t = self.cfg.trainer
        warmup = round(t.warmup_epochs * self.steps_per_epoch)
        lrs = []
        for s in self.sets:
            lrs.append(warmup_cosine(self.step, self.total_steps, warmup, s.peak_lr, t.min_lr * s.peak_lr))
            wd = s.settings.weight_decay_end
            if wd is not None:
                wd = cosine_schedule(s.settings.weight_decay, wd, self.progress().fraction)
            set_lr(s.optimizer, lrs[-1], wd)
        return lrs[0]

    @torch.no_grad()
    def make_views(self, x: torch.Tensor, aug_seed: int,
                   texts: list[torch.Tensor] = ()) -> list[torch.Tensor]:
        """The method's inputs for a uint8 batch [B, C, H, W] (and its `texts`, see `batch`): its
        views, then (for methods with a `prepare`) the pretext inputs, targets or masks made from
        them, all drawn from one generator seeded with `aug_seed`, so a step's draws depend only
        on the seed, rank and step."""
        return method_inputs(self.model, self.views, x, self._aug.manual_seed(aug_seed),
                             self.cfg.trainer.channels_last, texts)

    def sample_views(self, n: int, seed: int) -> list[torch.Tensor]:
        """The method's inputs (as `make_views` gives them) for `n` training images picked with
        `seed`: what a codebook is built from and what the pictures show."""
        parts = [self.make_views(x, seed + i, texts) for i, (x, texts) in enumerate(self.feed.pick(n, seed))]
        return [torch.cat(p) for p in zip(*parts)]

    def train_step(self, x: torch.Tensor, aug_seed: int,
                   texts: list[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
        """One step on a uint8 batch [B, C, H, W] on the device (and its `texts`, see `batch`): the
        method's views (drawn from `aug_seed`), then for each parameter set in order its loss
        under autocast, backward, clip and optimizer step, then the method's per-step state.
        Returns {set name: detached loss}; the method's metrics are kept in `last_metrics`."""
        return self.step_on(self.make_views(x, aug_seed, texts))

    def step_on(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """`train_step` on views made elsewhere (a benchmark's baseline pipeline, for one)."""
        progress = self.progress()
        after = hook(self.model, "on_after_backward")
        losses, metrics, state = {}, {}, {}
        for s in self.sets:
            with autocast(self.device, self.precision):
                out = s.loss(views, progress)
            backward_step(out.loss, s.optimizer, s.params, s.settings.grad_clip,
                          after and (lambda: after(progress)))
            losses[s.name] = out.loss.detach()
            metrics.update(out.metrics or {})
            state.update(out.state or {})
        on_step_end = hook(self.model, "on_step_end")
        if on_step_end:
            on_step_end(progress, state)
        self.last_metrics = metrics
        return losses

    def fit(self) -> Path:
        t = self.cfg.trainer
        main = dist.is_main()
        self._claim()
        try:
            return self._fit(t, main)
        finally:
            self.release()

    def _fit(self, t, main: bool) -> Path:
        if main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.config.write_text(to_yaml(self.cfg))
            if self.tokenizer is not None:
                self.run.tokenizer.write_text(self.tokenizer.to_json())
            self.run.write_stats(self.mean, self.std)
        log = RunLog(self.run if main else None)
        log.log("start", self.step, device=describe_device(self.device), precision=self.precision,
                processes=self.world, train_images=len(self.train_set),
                test_images=len(self.test_set) if self.test_set is not None else 0,
                backbone_params=sum(p.numel() for p in self.model.backbone.parameters()),
                method_params=sum(p.numel() for p in self.model.parameters()), torch=torch.__version__)
        rank = dist.rank()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (main and t.progress),
                   desc=f"{self.cfg.method.name}", unit="step", dynamic_ncols=True)
        window_start = time.perf_counter()
        session = (self.step, self.train_time)  # where this process started: for the budget's rate
        window = LossWindow()
        init = hook(self.model, "init_from_data")
        if init:  # e.g. a tokenizer's codebook, built once; what it cost goes to the log
            fitted = init(lambda k: self.sample_views(k, t.seed), seed=t.seed)
            if fitted:
                log.log("fitted", self.step, **fitted)
        self.model.train()
        try:
            while self.step < self.total_steps:
                epoch = self.step // self.steps_per_epoch
                x, texts = self.feed.batch(self.step)
                lr = self.set_schedules()
                window.add(self.train_step(x, step_seed(t.seed, rank, self.step), texts))
                self.step += 1
                bar.update(1)

                epoch_done = self.step % self.steps_per_epoch == 0
                save_now = self._checkpoint_due(epoch_done)
                if self.step % t.log_every == 0 or epoch_done or save_now:
                    # The only host sync of the loop: every log_every steps, and before a save,
                    # so that a checkpoint is never written after a NaN.
                    steps = window.steps
                    losses = window.read()
                    now = time.perf_counter()
                    self.train_time += now - window_start
                    if t.minutes is not None:
                        self.fit_to_budget(*session)
                        bar.total = self.total_steps
                        save_now = save_now or self._checkpoint_due(epoch_done)
                    check_finite(losses, f"at step {self.step} (epoch {epoch})",
                                 f"Last good checkpoint: {latest_checkpoint(self.run.checkpoints) or 'none'}. "
                                 "Try a lower trainer.lr, trainer.grad_clip, or trainer.precision=fp32.")
                    ips = steps * t.batch_size / max(now - window_start, 1e-9)
                    per_set = {f"loss_{k}": v for k, v in losses.items()} if len(losses) > 1 else {}
                    loss = sum(losses.values())
                    log.log("train", self.step, epoch=self.step / self.steps_per_epoch, loss=loss,
                            **per_set, lr=lr, images_per_s=ips, train_time_s=self.train_time,
                            **self.last_metrics)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
                    if save_now:
                        self.save()
                    epochs_done = self.step // self.steps_per_epoch
                    if (epoch_done and self.step < self.total_steps and t.knn_every > 0
                            and epochs_done % t.knn_every == 0):
                        self.write_pictures(log)
                        self._log_knn(log, self.train_time)
                    dist.barrier()
                    window_start = time.perf_counter()
            self.feed.close()
            result = self.finish(log, self.train_time)
        finally:
            self.feed.close()
            bar.close()
            log.close()
        return result

    def fit_to_budget(self, start_step: int, start_time: float) -> None:
        """trainer.minutes: the run's total steps from the speed measured since this process
        started (at `start_step`, `start_time` seconds in), so that training ends when the budget
        does; every rank takes the main process's figure, so that all stop at the same step."""
        done, spent = self.step - start_step, self.train_time - start_time
        left = self.cfg.trainer.minutes * 60 - self.train_time
        total = torch.tensor([self.step + max(0, round(left * done / max(spent, 1e-9)))])
        self.total_steps = max(self.step, int(dist.broadcast(total)[0]))

    def _checkpoint_due(self, epoch_done: bool) -> bool:
        t = self.cfg.trainer
        return (self.step == self.total_steps
                or (epoch_done and (self.step // self.steps_per_epoch) % t.checkpoint_every == 0)
                or bool(t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0))

    def write_pictures(self, log: RunLog, final: bool = False) -> list[Path]:
        """The method's picture grids (if it has `pictures`) of 8 fixed training images, at each
        online k-NN point and at the end: pictures/<name>_step_N.png, TensorBoard, and (at the
        end) <name>.png in the run folder."""
        pictures = hook(self.model, "pictures")
        if not pictures or not dist.is_main():
            return []
        with frozen_eval(self.model), torch.no_grad(), autocast(self.device, self.precision):
            grids = pictures(self.sample_views(8, self.cfg.trainer.seed + 2))
        written = []
        for name, rows in grids.items():
            image = grid_image(rows, self.mean, self.std)
            log.image(name, image, self.step)
            scale = max(1, 96 // rows[0].shape[-1])
            written.append(save_png(image, self.run.picture(name, self.step), scale))
            if final:
                written.append(save_png(image, self.run.picture(name), scale))
        return written

    def _log_knn(self, log: RunLog, train_time: float) -> dict | None:
        """The online k-NN and the embedding's health, logged; the k-NN result."""
        out = self.evaluate(("knn",))
        if out is None:
            return None
        res, epoch = out["knn"], self.step / self.steps_per_epoch
        log.log("knn", self.step, epoch=epoch, top1=res["top1"], train_time_s=train_time,
                protocol=res["protocol"])
        log.log("health", self.step, epoch=epoch, **out["health"])
        tqdm.write(f"epoch {epoch:.0f}: k-NN top-1 {res['top1']:.2f}%")
        if out["health"]["collapsed"]:
            tqdm.write(f"warning: the representation has {verdict(out['health'])}")
        return res

    def finish(self, log: RunLog, train_time: float) -> Path:
        res = self._log_knn(log, train_time) if self.cfg.trainer.knn_every >= 0 else None
        self.write_pictures(log, final=True)
        if dist.is_main():
            save_weights(self.run.encoder, self.model.backbone.state_dict(),
                         metadata={"backbone": self.cfg.backbone.name, "step": str(self.step)})
            log.log("done", self.step, train_time_s=train_time,
                    knn_top1=res["top1"] if res else None)
        dist.barrier()
        return self.run_dir
