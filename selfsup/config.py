"""Run configuration: typed dataclasses, YAML recipes, dotted command-line overrides.

A recipe is a small YAML file (shipped ones live in `selfsup/recipes/`); overrides are
`key.sub=value` strings. OmegaConf does the parsing and type checking against the dataclasses, so
unknown keys and ill-typed values are refused; each dataclass's `__post_init__` checks the values
that a type cannot (choices, ranges). The method section is validated against the config class of
the method it names, looked up in the method registry.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.backbones import BackboneConfig
from selfsup.errors import ConfigError
from selfsup.eval import FewshotConfig, FinetuneConfig, KNNConfig, LinearConfig
from selfsup.methods import METHODS
from selfsup.report.settings import ReportConfig
from selfsup.views import ViewConfig

RECIPES_DIR = Path(__file__).parent / "recipes"


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class DataConfig:
    """Where the training images come from.

    name: a dataset name (digits, cifar10, cifar100, mnist, fashion-mnist, stl10) or a path to an
        image folder, a tar of one, an .npz or an idx file.
    root: folder holding the datasets; default $SELFSUP_DATA, then ~/.cache/selfsup/data.
    train_split / test_split: splits used for pretraining and for k-NN / linear evaluation
        (test_split null: no online evaluation).
    image_size: resize (shorter side + centre crop) images of a folder whose sizes differ.
    subset: train on a seeded random subset of this many training images.
    on_device: keep the uint8 images on the training device (the fast path).
    download: fetch a missing official dataset into the root (checksum verified).
    strict: stop at the first image that cannot be decoded (default: skip it, warn, count it).
    holdout: image-caption data without split folders (a folder or tar with a captions file):
        the fraction of images in the test split, drawn with trainer.seed; train is the rest.
    caption_templates: give a labelled dataset captions made from its class names, one per
        template ("a photo of a {}."; the empty list: selfsup.data.captions.TEMPLATES), for
        image-text methods; null: no captions made.
    channels: 1 or 3 to bring the images to that many channels wherever the run's data is loaded
        (grey repeated to RGB, RGB to grey by ITU-R 601 luma), e.g. 3 for a colour encoder
        (backbone.input=L or split) on grey data; null: as the data comes.
    For a shards folder (`selfsup shards`; name is its path), streamed rather than loaded
    (selfsup/data/stream.py), with image_size the size images are decoded to:
    workers: decoding processes per training process (0: decode in the training process).
    shuffle_buffer: images in each worker's shuffle buffer.
    decode_crop: [min, max] area fraction of a random-resized crop made while decoding (ratio
        3/4 to 4/3; the views then crop again within it); null: whole images (shorter side,
        centre crop), the pixels an image folder read with data.image_size gives.
    """

    name: str = "digits"
    root: Optional[str] = None
    train_split: str = "train"
    test_split: Optional[str] = "test"
    image_size: Optional[int] = None
    subset: Optional[int] = None
    on_device: bool = True
    download: bool = False
    strict: bool = False
    holdout: float = 0.1
    caption_templates: Optional[list[str]] = None
    channels: Optional[int] = None
    workers: int = 2
    shuffle_buffer: int = 1000
    decode_crop: Optional[list[float]] = None

    def __post_init__(self):
        if not str(self.name).strip():
            raise ValueError("data.name is empty: name a dataset or a path")
        for name in ("image_size", "subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name}={value}: must be at least 1 (or null)")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"data.channels={self.channels}: must be 1, 3 or null")
        if not 0 < self.holdout < 1:
            raise ValueError(f"data.holdout={self.holdout}: must be in (0, 1)")
        if self.workers < 0 or self.shuffle_buffer < 1:
            raise ValueError(f"data.workers={self.workers}, data.shuffle_buffer={self.shuffle_buffer}: "
                             f"workers must be at least 0 and the buffer at least 1")
        c = self.decode_crop
        if c is not None and not (len(c) == 2 and 0 < c[0] <= c[1] <= 1):
            raise ValueError(f"data.decode_crop={c}: must be [min, max] with 0 < min <= max <= 1, or null")
        for t in self.caption_templates or []:
            if t.count("{}") != 1:
                raise ValueError(f"data.caption_templates: {t!r} must hold one {{}} for the class name")


@dataclass
class ParamSetConfig:
    """Optimizer settings of one parameter set of a method with several (a GAN's generator and
    discriminator, see `selfsup/protocol.py`), under `trainer.param_sets.<set name>`. A null
    field takes the method's default for the set, else the trainer's own setting of that name.
    """

    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    weight_decay_end: Optional[float] = None
    momentum: Optional[float] = None
    betas: Optional[list[float]] = None
    grad_clip: Optional[float] = None


@dataclass
class TrainerConfig:
    """The one training loop every method uses.

    epochs: passes over the training set, may be fractional (2.5: two and a half); batch_size:
        images per step over all processes.
    minutes: a training-time budget (evaluations excluded; null: off). The run's length is
        estimated again from its measured speed at every logged point, so the learning-rate
        schedule ends when the time does; `epochs` is the first estimate. The length then depends
        on the machine's speed, so two such runs are not the same run.
    optimizer: sgd | adamw | lars (LARS skips adaptation and weight decay of biases and norms).
    lr: base learning rate for 256 images, scaled by lr_scaling (linear: lr*batch/256,
        sqrt: lr*sqrt(batch/256), none). min_lr: floor of the cosine decay, as a fraction of the peak.
    weight_decay, momentum, betas: optimizer settings; wd_exclude_bias_norm: no decay on 1-d params.
    lars_trust: LARS's trust coefficient eta (1e-3, You et al. 2017 and the SimCLR/BYOL/MoCo v3
        code; solo-learn's recipes use 0.02 with the ratio clipped, so their lrs do not carry over).
    weight_decay_end: weight decay at the last step, reached along a half cosine from weight_decay
        (DINO's schedule, 0.04 -> 0.4); null: constant.
    warmup_epochs: linear warm-up length (may be fractional).
    grad_clip: clip the global gradient norm to this value (null: off).
    precision: auto (bf16 on GPUs and on CPUs with avx512_bf16/AMX, else fp32) | bf16 | fp32.
    channels_last: NHWC memory format for convolutions. compile: wrap the method in torch.compile.
    sync_bn: convert BatchNorm to SyncBatchNorm under DDP.
    device: auto | cpu | cuda | cuda:N | mps. seed: fixes data order, augmentation and init.
    threads: CPU threads for torch (null: torch's default).
    knn_every: online k-NN evaluation every N epochs (0: only at the end; -1: never).
    knn_bank: use at most this many training images as the online k-NN memory bank (null: all).
    checkpoint_every: save every N epochs; checkpoint_every_steps: also every N steps (0: off).
    keep_checkpoints: how many of the newest checkpoints the run folder keeps (0: every one, so
        that `selfsup eval PROTOCOL RUN --checkpoints` can follow the run; each is the method's
        weights plus the optimizer's state). More than one lets `--resume` fall back to an older
        checkpoint when the newest fails its verification (selfsup/train/checkpoint.py).
    log_every: steps between logged points. progress: show a progress bar.
    out: folder for run folders; run_name: this run's folder name (default: recipe + time).
    param_sets: per parameter set, changes to the optimizer settings above (`ParamSetConfig`),
        e.g. `trainer.param_sets.discriminator.lr=1e-4`; the names are the method's sets.
    """

    epochs: float = 10
    minutes: Optional[float] = None
    batch_size: int = 256
    optimizer: str = "lars"
    lr: float = 0.3
    lr_scaling: str = "linear"
    min_lr: float = 0.0
    weight_decay: float = 1e-6
    weight_decay_end: Optional[float] = None
    wd_exclude_bias_norm: bool = True
    momentum: float = 0.9
    lars_trust: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    grad_clip: Optional[float] = None
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = True
    device: str = "auto"
    seed: int = 0
    threads: Optional[int] = None
    knn_every: int = 0
    knn_bank: Optional[int] = None
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    out: str = "runs"
    run_name: Optional[str] = None
    param_sets: dict[str, ParamSetConfig] = field(default_factory=dict)

    def __post_init__(self):
        check_optimizer_settings(self, "trainer")
        for name, changes in self.param_sets.items():
            check_optimizer_settings(changes, f"trainer.param_sets.{name}")
        _choice("trainer.lr_scaling", self.lr_scaling, ("linear", "sqrt", "none"))
        _choice("trainer.precision", self.precision, ("auto", "bf16", "fp32"))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"trainer.device={self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.epochs <= 0:
            raise ValueError(f"trainer.epochs must be positive, got {self.epochs}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"trainer.minutes must be positive, got {self.minutes}")
        at_least = {"batch_size": 1, "log_every": 1, "checkpoint_every": 1, "threads": 1, "knn_bank": 1,
                    "checkpoint_every_steps": 0, "keep_checkpoints": 0, "knn_every": -1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"trainer.{name} must be at least {low}, got {value}")
        for name, low, high in (("warmup_epochs", 0, None), ("min_lr", 0, 1), ("lars_trust", 1e-12, None)):
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bounds = f"in [{low}, {high}]" if high is not None else ("positive" if low else ">= 0")
                raise ValueError(f"trainer.{name} must be {bounds}, got {value}")
        for name in ("run_name", "out"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise ValueError(f"trainer.{name} is empty")
        if self.run_name is not None and ("/" in self.run_name or "\\" in self.run_name or self.run_name in (".", "..")):
            raise ValueError(f"trainer.run_name={self.run_name!r} must be a folder name, not a path "
                             f"(use trainer.out or --run-dir for the place)")


def check_optimizer_settings(s: TrainerConfig | ParamSetConfig, section: str) -> None:
    """The checks the optimizer settings of the trainer and of a parameter set share (a
    ParamSetConfig's null fields are not checked: they take another value)."""
    if s.optimizer is not None:
        _choice(f"{section}.optimizer", s.optimizer, ("sgd", "adamw", "lars"))
    if s.lr is not None and s.lr <= 0:
        raise ValueError(f"{section}.lr must be positive, got {s.lr}")
    for name in ("weight_decay", "weight_decay_end"):
        value = getattr(s, name)
        if value is not None and value < 0:
            raise ValueError(f"{section}.{name} must be >= 0, got {value}")
    if s.momentum is not None and not 0 <= s.momentum < 1:
        raise ValueError(f"{section}.momentum must be in [0, 1), got {s.momentum}")
    if s.grad_clip is not None and s.grad_clip <= 0:
        raise ValueError(f"{section}.grad_clip must be positive (or null: off), got {s.grad_clip}")
    if s.betas is not None and (len(s.betas) != 2 or not all(0 <= b < 1 for b in s.betas)):
        raise ValueError(f"{section}.betas needs two values in [0, 1), got {list(s.betas)}")


@dataclass
class EvalDataConfig:
    """eval.data: evaluate on another labelled dataset than the run's own (transfer). name: null,
    the run's data.*; else a dataset name or path, read with these settings (root: null, data.root)."""

    name: Optional[str] = None
    root: Optional[str] = None
    train_split: str = "train"
    test_split: str = "test"
    image_size: Optional[int] = None

    def __post_init__(self):
        if self.name is not None and not str(self.name).strip():
            raise ValueError("eval.data.name is empty: name a dataset or a path (null: the run's data)")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"eval.data.image_size={self.image_size}: must be at least 1 (or null)")


@dataclass
class EvalConfig:
    """Evaluation after or during training: k-NN and linear probe on the frozen backbone, and
    end-to-end fine-tuning (`finetune`, see selfsup/eval/finetune.py).

    batch_size: images per feature-extraction batch. layer: which backbone output to probe
    (null: the pooled output; one of the backbone's layer_names, e.g. layer3 or block6; or all:
    every layer, extracted in one pass, one result per layer).
    pool: null, or g: DCGAN's feature (Radford et al. 2015, §5.1, g=4): every layer of the
        backbone (its layer_names) max-pooled to a g x g grid, flattened and concatenated, for
        every frozen protocol (k-NN, linear, fewshot; not fine-tuning). It already spans every
        layer, so it excludes eval.layer (null with it).
    size: evaluation input size (null: the training view size, views.size); a CNN trained on
        small random crops often does better tested at the images' full size (FixRes, Touvron 2019).
    train_subset / test_subset: `selfsup eval knn|linear` on a seeded, class-stratified subset of
        this many training / test images (null: all); fine-tuning has its own, eval.finetune.*.
    loss_images: test images on which `selfsup eval ... --checkpoints` measures the method's
        held-out pretraining loss at every checkpoint (a seeded, class-stratified subset).
    fewshot: `selfsup eval fewshot`: linear probes on few-label subsets (selfsup/eval/fewshot.py).
    data: the labelled dataset the frozen protocols and fine-tuning use (EvalDataConfig;
        default: the run's own): transfer, its channel mapping and resizing in the protocol line.
    zeroshot_data / zeroshot_split: the labelled dataset `selfsup eval zeroshot` classifies by
        its class names (null: the run's own data and test split); zeroshot_templates: its
        prompts (null: data.caption_templates if set, else selfsup.data.captions.TEMPLATES).
    """

    batch_size: int = 512
    layer: Optional[str] = None
    pool: Optional[int] = None
    size: Optional[int] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    loss_images: int = 2000
    zeroshot_data: Optional[str] = None
    zeroshot_split: str = "test"
    zeroshot_templates: Optional[list[str]] = None
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)

    def __post_init__(self):
        for name in ("batch_size", "pool", "size", "train_subset", "test_subset", "loss_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"eval.{name} must be at least 1 (or null), got {value}")
        if self.pool is not None and self.layer is not None:
            raise ValueError(f"eval.pool={self.pool} takes every layer: eval.layer={self.layer!r} "
                             "must be null with it")


@dataclass
class Config:
    """A whole run. `views` describes the method's (first) views; each entry of `extra_views` is
    more views drawn after them, written as changes to `views`: BYOL's second, asymmetric view
    `{blur_p: 0.1, solarize_p: 0.2}`, or DINO's local crops `{n_views: 6, size: 16, scale: [0.05,
    0.25]}`. A method receives all views in that order."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    extra_views: list[dict[str, Any]] = field(default_factory=list)
    method: Any = field(default_factory=lambda: {"name": "simclr"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def recipe_path(recipe: str) -> Path:
    """A shipped recipe's name (quick, cifar10_simclr, ...) or a path to a YAML file."""
    return shipped_or_path(recipe, RECIPES_DIR, "recipe")


def shipped_or_path(name: str, folder: Path, what: str) -> Path:
    """`folder/<name>.yaml` for a shipped file's name, else `name` as a path to a YAML file; a
    refusal names it as `what` (recipe, study)."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if path.is_file():
            return path
        raise ConfigError(f"{what} {name}: {'no such file' if not path.exists() else 'not a file'}")
    shipped = folder / f"{name}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise ConfigError(f"no {what} {name!r}: not a shipped {what} ({', '.join(names)}) nor a .yaml path")


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> DictConfig:
    """A config class's defaults as a structured DictConfig, built once per class (building one
    is most of a config's cost); `OmegaConf.merge` copies it, so it is never changed."""
    return OmegaConf.structured(cls)


def _merge(schema_obj: Any, *sources: Any, prefix: str = "") -> DictConfig:
    """Sources merged over the dataclass's defaults; OmegaConf's own message (which suggests the
    closest key for a misspelling) plus the dotted key."""
    base = _schema(schema_obj) if isinstance(schema_obj, type) else OmegaConf.structured(schema_obj)
    try:
        return OmegaConf.merge(base, *sources)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).split("\n")[0]
        raise ConfigError(msg + (f" [key: {prefix}{key}]" if key else "")) from None


def _to_object(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_object(cfg)
    except (ValueError, TypeError) as e:  # raised by __post_init__ checks
        raise ConfigError(str(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).split("\n")[0]) from None


def _as_dictconfig(source: Any, what: str) -> DictConfig:
    if isinstance(source, DictConfig):
        return source
    if isinstance(source, dict):
        return OmegaConf.create(source)
    try:
        if isinstance(source, (list, tuple)):
            return OmegaConf.from_dotlist(list(source))
        loaded = OmegaConf.load(source)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse {what}: {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # the parser's own message ends with the line and column
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"{what} is not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what}: {e}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what} must hold a mapping of sections (data:, trainer:, ...), "
                          f"not a {type(loaded).__name__}")
    return loaded


def _check_finite(node: Any, key: str) -> None:
    """Refuse NaN and infinity in any number setting: they pass every range check (each
    comparison with NaN is false) and would only surface as a diverged loss later."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node}: must be a finite number")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        _check_finite(v, f"{key}.{k}" if key else str(k))


def _indexes_list(override: str) -> bool:
    """Whether a `key=value` override addresses an item of a list (`extra_views.1.n_views=4`)."""
    return any(part.isdigit() for part in override.split("=", 1)[0].strip().split("."))


def build_config(*sources: Any) -> Config:
    """Merge sources (YAML paths, dicts, DictConfigs, lists of `a.b=c` overrides) over the defaults.

    Returns a validated `Config` whose `method` is the method's own config dataclass.
    """
    for s in sources:
        if isinstance(s, (list, tuple)):
            bad = [o for o in s if "=" not in o]
            if bad:
                raise ConfigError(f"overrides look like key.sub=value; cannot read {bad[0]!r}")
    # An override such as `extra_views.1.n_views=4` addresses an item of a list, which a merged
    # dotlist cannot (it would build a dict keyed "1"); these are applied to the merged config.
    indexed = [o for s in sources if isinstance(s, (list, tuple)) for o in s if _indexes_list(o)]
    sources = tuple([o for o in s if not _indexes_list(o)] if isinstance(s, (list, tuple)) else s
                    for s in sources)
    loaded = [_as_dictconfig(s, str(s)) for s in sources]
    cfg = _merge(Config, *loaded)
    for override in indexed:
        key = override.split("=", 1)[0].strip()
        value = OmegaConf.select(OmegaConf.from_dotlist([override]), key)
        parts = key.split(".")
        item = ".".join(parts[: next(i for i, p in enumerate(parts) if p.isdigit()) + 1])
        if OmegaConf.select(cfg, item) is None:
            raise ConfigError(f"{key}: there is no {item}")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{str(e).splitlines()[0]} [key: {key}]") from None
    name = cfg.method.get("name") if isinstance(cfg.method, DictConfig) else None
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not one of: {', '.join(sorted(METHODS))}")
    method_cfg = _merge(METHODS[name].config_class, cfg.method, prefix="method.")
    with_method = OmegaConf.merge(_schema(Config), {"method": {}})
    OmegaConf.set_struct(with_method, False)
    merged = OmegaConf.merge(with_method, cfg)
    merged.method = method_cfg
    _check_finite(OmegaConf.to_container(merged, resolve=True), "")
    config = _to_object(merged)
    view_configs(config)  # refuse a bad extra_views entry now, naming it
    from selfsup.checks import check_model  # it builds the model: imports the trainer

    check_model(config)
    return config


def view_configs(cfg: Config) -> list[ViewConfig]:
    """`views` followed by each `extra_views` entry merged over it: every family of views a step
    draws, in the order the method receives them."""
    out = [cfg.views]
    for i, changes in enumerate(cfg.extra_views):
        merged = _merge(ViewConfig, dataclasses.asdict(cfg.views), OmegaConf.create(dict(changes)),
                        prefix=f"extra_views.{i}.")
        try:
            out.append(_to_object(merged))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg.replace("views.", f"extra_views.{i}.", 1) if msg.startswith("views.")
                              else f"extra_views.{i}: {msg}") from None
    return out


def load_config(recipe: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A recipe (name or path) plus overrides, validated."""
    return build_config(recipe_path(recipe), list(overrides))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
