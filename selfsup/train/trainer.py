"""One plain training loop for every method.

uint8 images live on the training device; each step takes a slice of a seeded permutation, makes
the method's views there, runs the method under autocast, steps the optimizer and the method's
per-step state. The run folder gets the resolved config, metrics.jsonl, TensorBoard events,
checkpoints and the final encoder weights.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from selfsup.backbones import build_backbone
from selfsup.config import Config, ConfigError, to_yaml, view_configs
from selfsup.data import ImageSet, dataset_stats, load_dataset
from selfsup.eval.features import frozen_eval
from selfsup.eval.protocols import knn_eval
from selfsup.methods import build_method
from selfsup.methods.schedules import Progress, cosine_schedule
from selfsup.run import write_stats
from selfsup.train import distributed as dist
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from selfsup.train.optim import build_optimizer, cosine_lr, peak_lr
from selfsup.train.pictures import grid_image, save_png
from selfsup.train.runlog import RunLog
from selfsup.views import build_view_set


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """avx512_bf16 or AMX: the CPUs on which bf16 autocast is faster than fp32, not slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one step on one rank: resuming at any step needs no saved RNG state."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch))


def prepare_data(cfg: Config) -> tuple[ImageSet, ImageSet | None, list[float], list[float]]:
    d = cfg.data
    train = load_dataset(d.name, d.train_split, root=d.root, image_size=d.image_size,
                         download=d.download)
    if d.subset is not None and d.subset < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.trainer.seed))
        train = train.subset(pick[: d.subset])
    test = None
    if d.test_split and train.labels is not None:
        test = load_dataset(d.name, d.test_split, root=d.root, image_size=d.image_size)
    mean, std = dataset_stats(train)
    return train, test, mean, std


def build_model(cfg: Config, in_channels: int) -> nn.Module:
    backbone = build_backbone(cfg.backbone, in_channels=in_channels, image_size=cfg.views.size)
    return build_method(cfg.method, backbone)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path | None = None, recipe: str = "run"):
        self.cfg = cfg
        t = cfg.trainer
        self.device = resolve_device(t.device)
        dist.init_distributed(self.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.amp_dtype = resolve_precision(t.precision, self.device)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(run_dir) if run_dir else Path(t.out) / (t.run_name or f"{recipe}-{stamp}")

        self.train_set, self.test_set, self.mean, self.std = prepare_data(cfg)
        self.world = dist.world_size()
        if t.batch_size % self.world:
            raise ConfigError(f"trainer.batch_size={t.batch_size} must divide among {self.world} processes")
        self.local_batch = t.batch_size // self.world
        self.steps_per_epoch = len(self.train_set) // t.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"trainer.batch_size={t.batch_size} is larger than the training set "
                             f"({len(self.train_set)} images)")
        self.total_steps = max(1, round(t.epochs * self.steps_per_epoch))
        store = self.device if cfg.data.on_device else torch.device("cpu")
        self.images = self.train_set.images.to(store)

        torch.manual_seed(t.seed)  # same initial weights on every rank, and from run to run
        self.model = build_model(cfg, self.train_set.images.shape[1]).to(self.device)
        if dist.is_distributed() and t.sync_bn and self.device.type == "cuda":
            # BatchNorm statistics over the global batch (SimCLR appendix B.1); GPUs only in torch.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.views = build_view_set(view_configs(cfg), self.mean, self.std)
        self.peak_lr = peak_lr(t.lr, t.batch_size, t.lr_scaling)
        self.optimizer = build_optimizer(self.model, t, self.peak_lr)
        self.step = 0
        self._aug = torch.Generator(device=self.device)
        self.last_metrics: dict[str, torch.Tensor] = {}

        self.forward = self.model
        if dist.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers are not broadcast from rank 0 each step: queues and centres are updated
            # from gathered values on every rank alike, and BN running statistics stay per rank.
            self.forward = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                               broadcast_buffers=False)
        if t.compile:
            self.forward = torch.compile(self.forward)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        if not dist.is_main():
            return
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        save_checkpoint(self.run_dir / "checkpoints", self.model.state_dict(), state, self.step)

    def resume(self) -> bool:
        """Continue from the run folder's latest checkpoint, if there is one."""
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        weights, state = load_checkpoint(path)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        return True

    # -- evaluation --------------------------------------------------------------------------
    def knn(self) -> dict | None:
        if self.test_set is None or not dist.is_main():
            return None
        t, e = self.cfg.trainer, self.cfg.eval
        bank = self.train_set
        if t.knn_bank is not None and t.knn_bank < len(bank):
            pick = torch.randperm(len(bank), generator=torch.Generator().manual_seed(t.seed + 1))
            bank = bank.subset(pick[: t.knn_bank])
        return knn_eval(self.model.backbone, bank, self.test_set, self.mean, self.std, e,
                        size=self.cfg.eval.size or self.cfg.views.size, device=self.device,
                        precision="bf16" if self.amp_dtype is not None else "fp32")

    # -- the loop ----------------------------------------------------------------------------
    def progress(self) -> Progress:
        return Progress(self.step, self.steps_per_epoch, self.total_steps)

    def set_schedules(self) -> float:
        """Learning rate (and weight decay, if scheduled) of the current step; returns the lr."""
        t = self.cfg.trainer
        warmup = round(t.warmup_epochs * self.steps_per_epoch)
        lr = cosine_lr(self.step, self.total_steps, warmup, self.peak_lr, t.min_lr * self.peak_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if t.weight_decay_end is not None:
            wd = cosine_schedule(t.weight_decay, t.weight_decay_end, self.progress().fraction)
            for g in self.optimizer.param_groups:
                if g["decay"]:
                    g["weight_decay"] = wd
        return lr

    @torch.no_grad()
    def make_views(self, x: torch.Tensor, aug_seed: int) -> list[torch.Tensor]:
        """The method's inputs for a uint8 batch [B, C, H, W]: its views, then (for methods with a
        `prepare`) the pretext inputs, targets or masks made from them, all drawn from one
        generator seeded with `aug_seed`, so a step's draws depend only on the seed, rank and step."""
        g = self._aug.manual_seed(aug_seed)
        views = self.views(x, g)
        if hasattr(self.model, "prepare"):
            views = self.model.prepare(views, g)
        if self.cfg.trainer.channels_last:  # image batches only; targets and masks stay as they are
            views = [v.contiguous(memory_format=torch.channels_last)
                     if v.dim() == 4 and v.is_floating_point() else v for v in views]
        return views

    def sample_views(self, n: int, seed: int) -> list[torch.Tensor]:
        """The method's inputs (as `make_views` gives them) for `n` training images picked with
        `seed`: what a codebook is built from and what the pictures show."""
        pick = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:n]
        parts = [self.make_views(self.images[idx.to(self.images.device)].to(self.device), seed + i)
                 for i, idx in enumerate(pick.split(self.local_batch))]
        return [torch.cat(p) for p in zip(*parts)]

    def train_step(self, x: torch.Tensor, aug_seed: int) -> torch.Tensor:
        """One optimizer step on a uint8 batch [B, C, H, W] on the device: the method's views
        (drawn from `aug_seed`), forward under autocast, backward, clip, step, per-step state.
        Returns the detached loss; the method's metrics are kept in `last_metrics`."""
        t = self.cfg.trainer
        progress = self.progress()
        views = self.make_views(x, aug_seed)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss, self.last_metrics = self.forward(views, progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hasattr(self.model, "on_after_backward"):  # e.g. DINO freezing its last layer
            self.model.on_after_backward(progress)
        if t.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.model.on_step_end(progress)
        return loss.detach()

    def fit(self) -> Path:
        t = self.cfg.trainer
        main = dist.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
            write_stats(self.run_dir, self.mean, self.std)
        log = RunLog(self.run_dir if main else None)
        rank, n = dist.rank(), len(self.train_set)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (main and t.progress),
                   desc=f"{self.cfg.method.name}", unit="step", dynamic_ncols=True)
        train_time, window_start, window_steps = 0.0, time.perf_counter(), 0
        running = torch.zeros((), device=self.device)
        if hasattr(self.model, "init_from_data"):  # e.g. a tokenizer's codebook, built once
            self.model.init_from_data(lambda k: self.sample_views(k, t.seed), seed=t.seed)
        self.model.train()
        try:
            while self.step < self.total_steps:
                epoch, i = divmod(self.step, self.steps_per_epoch)
                perm = epoch_permutation(n, t.seed, epoch)
                lo = i * t.batch_size + rank * self.local_batch
                idx = perm[lo: lo + self.local_batch].to(self.images.device)
                x = self.images[idx].to(self.device, non_blocking=True)
                lr = self.set_schedules()
                loss = self.train_step(x, step_seed(t.seed, rank, self.step))
                self.step += 1
                window_steps += 1
                running += loss
                bar.update(1)

                epoch_done = self.step % self.steps_per_epoch == 0
                save_now = self._checkpoint_due(epoch_done)
                if self.step % t.log_every == 0 or epoch_done or save_now:
                    # The only host sync of the loop: every log_every steps, and before a save,
                    # so that a checkpoint is never written after a NaN.
                    mean_loss = (running / window_steps).item()
                    now = time.perf_counter()
                    train_time += now - window_start
                    self._check_finite(mean_loss, epoch)
                    ips = window_steps * t.batch_size / max(now - window_start, 1e-9)
                    log.log("train", self.step, epoch=self.step / self.steps_per_epoch, loss=mean_loss,
                            lr=lr, images_per_s=ips, train_time_s=train_time,
                            **{k: v.item() for k, v in self.last_metrics.items()})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
                    running.zero_()
                    window_steps = 0
                    if save_now:
                        self.save()
                    epochs_done = self.step // self.steps_per_epoch
                    if (epoch_done and self.step < self.total_steps and t.knn_every > 0
                            and epochs_done % t.knn_every == 0):
                        self.write_pictures(log)
                        self._log_knn(log, train_time)
                    dist.barrier()
                    window_start = time.perf_counter()
            result = self.finish(log, train_time)
        finally:
            bar.close()
            log.close()
        return result

    def _check_finite(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            last = latest_checkpoint(self.run_dir / "checkpoints")
            raise TrainingDiverged(
                f"loss is {loss} at step {self.step} (epoch {epoch}); stopping. Last good "
                f"checkpoint: {last or 'none'}. Try a lower trainer.lr, trainer.grad_clip, "
                f"or trainer.precision=fp32.")

    def _checkpoint_due(self, epoch_done: bool) -> bool:
        t = self.cfg.trainer
        return (self.step == self.total_steps
                or (epoch_done and (self.step // self.steps_per_epoch) % t.checkpoint_every == 0)
                or bool(t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0))

    def write_pictures(self, log: RunLog, final: bool = False) -> list[Path]:
        """The method's picture grids (if it has `pictures`) of 8 fixed training images, at each
        online k-NN point and at the end: pictures/<name>_step_N.png, TensorBoard, and (at the
        end) <name>.png in the run folder."""
        if not hasattr(self.model, "pictures") or not dist.is_main():
            return []
        with frozen_eval(self.model), torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                enabled=self.amp_dtype is not None):
            grids = self.model.pictures(self.sample_views(8, self.cfg.trainer.seed + 2))
        written = []
        for name, rows in grids.items():
            image = grid_image(rows, self.mean, self.std)
            log.image(name, image, self.step)
            scale = max(1, 96 // rows[0].shape[-1])
            written.append(save_png(image, self.run_dir / "pictures" / f"{name}_step_{self.step}.png",
                                    scale))
            if final:
                written.append(save_png(image, self.run_dir / f"{name}.png", scale))
        return written

    def _log_knn(self, log: RunLog, train_time: float) -> dict | None:
        res = self.knn()
        if res is not None:
            log.log("knn", self.step, epoch=self.step / self.steps_per_epoch, top1=res["top1"],
                    train_time_s=train_time, protocol=res["protocol"])
            tqdm.write(f"epoch {self.step / self.steps_per_epoch:.0f}: k-NN top-1 {res['top1']:.2f}%")
        self.model.train()
        return res

    def finish(self, log: RunLog, train_time: float) -> Path:
        res = self._log_knn(log, train_time) if self.cfg.trainer.knn_every >= 0 else None
        self.write_pictures(log, final=True)
        if dist.is_main():
            save_weights(self.run_dir / "encoder.safetensors", self.model.backbone.state_dict(),
                         metadata={"backbone": self.cfg.backbone.name, "step": str(self.step)})
            log.log("done", self.step, train_time_s=train_time,
                    knn_top1=res["top1"] if res else None)
        dist.barrier()
        return self.run_dir
