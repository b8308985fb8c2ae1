"""The contract between a method and the trainer, written once; every method follows it.

A method is an `nn.Module` in its own file under `selfsup/methods/`, registered by one line in
`selfsup/methods/__init__.py`, with recipes under `selfsup/recipes/`. Nothing else is needed: the
trainer, the evaluators and the registry-wide tests (`tests/test_methods.py`, `tests/test_train.py`,
`tests/test_distributed.py`) find it in the registry.

Required
--------
- `config_class`: a dataclass, the `method:` section of a recipe. Its `name` field is the
  registry key; `__post_init__` raises ValueError naming `method.<field>` for a bad value; its
  `tiny` class attribute lists the overrides (dotted keys, any section) that make a run small
  enough for a test, e.g. `("method.proj_hidden=32", "views.n_views=1")`.
- `__init__(cfg, backbone)`: the method owns `backbone` as `self.backbone` (the encoder that is
  exported and evaluated) and builds its heads around `backbone.dim`.
- `forward(views, progress) -> Output`: the loss of one step. `views` are the tensors the view
  recipes drew, in order (`views` then each `extra_views` entry), or what `prepare` made of them.

Optional hooks, in the order the trainer calls them (`hook(method, name)` finds them)
-------------------------------------------------------------------------------------
- `init_from_data(sample, seed)`: once, before the first step of a run (also of a resumed run,
  which should keep what its checkpoint holds). `sample(n)` gives the method's inputs for n
  fixed training images. Tokenizer codebooks are built here. It may return a dict of numbers
  (what fitting cost: seconds, a training curve's ends), which the run log records as "fitted".
- `param_sets() -> list[ParamSet]`: once, before the optimizers are built. Each set has its own
  parameters, loss, optimizer and settings, and is updated in the order given (a GAN's
  discriminator, then its generator). Without it, the method is one set, "model", of every
  parameter that requires a gradient, and its loss is `forward`.
- `make_tokenizer(texts) -> selfsup.data.text.Tokenizer`: once, for image-text methods (CLIP),
  given the training images' captions. The trainer then requires captions (a captions file, or
  data.caption_templates), stores the tokenizer in the run folder (`tokenizer.json`), and gives
  every step, after the views, the batch's caption tokens [B, K, T] and which exist [B, K].
- `prepare(views, generator) -> list[Tensor]`: every step, without gradients, after the views
  are drawn: pretext inputs and targets (rotations, tiles) or masks, drawn from `generator`.
- `on_after_backward(progress)`: after each backward, before clipping and the optimizer step
  (DINO drops its last layer's gradients there).
- `on_step_end(progress, state)`: once per step, after every optimizer step: the only place
  per-step state changes (EMA teachers, queues, centres). `state` holds the `Output.state`
  values of the step's losses.
- `pictures(views) -> {name: [rows]}`: at each online k-NN point and at the end, in eval mode
  and without gradients, on `sample` inputs of 8 fixed training images; each row is a batch of
  normalised images [n, C, H, W], all rows of one size (see `selfsup/train/pictures.py`).

Optional attribute
------------------
- `fitted_buffers`: state-dict names of the buffers `init_from_data` fills from the data (a
  tokenizer's codebook); a backbone may have its own (iGPT's palette). The random-init baselines
  (`--random-init`, step 0 of `--checkpoints`) keep them from the run and re-draw the rest.

Rules
-----
- Metrics are 0-dim tensors or Python numbers. The trainer reads them (one host sync) only at
  its log points, never in the step, so a method must not call `.item()` in `forward`.
- Every parameter of a set gets a gradient from that set's loss at every step: DDP runs with
  `find_unused_parameters=False`, and a parameter without a gradient stops a multi-process run.
  A part that has nothing to do for some data (a colouriser for grey images) is not built.
- Buffers change only in `on_step_end`, and identically on every rank: from values gathered
  (`selfsup.distributed.gather`) or averaged (`all_reduce_mean`) across ranks. BatchNorm running
  statistics are the one exception: they stay per rank.
- Values that `on_step_end` needs from `forward` travel in `Output.state`, never on `self`.
- Randomness comes only from the generator given to `prepare` (and the views), so a step's draws
  depend on the seed, the rank and the step alone, and a resumed run repeats them.
- Everything follows the device of its inputs; nothing assumes a GPU.
- A method never imports another method: what two methods share belongs in `selfsup/parts/`
  (modules: EMA teacher, queue, heads, decoder, tokenizers, multi-crop runner, puzzles) or
  `selfsup/losses.py` (pure loss functions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Progress:
    """Where training stands, handed to every loss and hook. step: optimizer steps already taken
    (0 at the first step). steps_per_epoch, total_steps: the run's length."""

    step: int
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional: 0.5 half-way through the first epoch."""
        return self.step / self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the run completed before this step, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def update_fraction(self) -> float:
        """0 at the first step, exactly 1 at the last: for schedules of the updates made after
        each step (EMA momentums), so that the run's last update uses the schedule's end value."""
        return min(1.0, self.step / max(1, self.total_steps - 1))


class Output(NamedTuple):
    """What a loss returns. loss: the scalar to minimise. metrics: {name: 0-dim tensor or number},
    logged (see the rules above). state: {name: tensor}, handed to `on_step_end` after the
    optimizer step (MoCo's keys for its queue, DINO's batch centre). None: empty."""

    loss: Tensor
    metrics: Optional[dict[str, Any]] = None
    state: Optional[dict[str, Tensor]] = None


@dataclass
class ParamSet:
    """One set of parameters with its own loss and optimizer.

    name: how logs (`loss_<name>`) and `trainer.param_sets.<name>` overrides refer to it.
    modules: the modules whose parameters (those that require a gradient) the set holds; sets
        must not share a parameter, and every trainable parameter must be in one.
    loss: `(views, progress) -> Output`, run after the sets before it have taken their step;
        its backward reaches this set's parameters only.
    optim: this set's defaults for the optimizer settings of `ParamSetConfig` (e.g.
        `{"optimizer": "adamw", "betas": [0.5, 0.999]}`), between the trainer's settings and
        the recipe's `trainer.param_sets.<name>`.
    """

    name: str
    modules: Sequence[nn.Module]
    loss: Callable[[list[Tensor], Progress], Output]
    optim: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """The required part of the contract (the module docstring has the whole of it)."""

    config_class: type
    backbone: nn.Module

    def forward(self, views: list[Tensor], progress: Progress) -> Output: ...


OPTIONAL_HOOKS = ("make_tokenizer", "init_from_data", "param_sets", "prepare", "on_after_backward",
                  "on_step_end", "pictures")


def hook(method: nn.Module, name: str) -> Callable | None:
    """The method's optional hook `name`, or None where it does not define one."""
    if name not in OPTIONAL_HOOKS:
        raise ValueError(f"{name!r} is not a method hook; the hooks are {', '.join(OPTIONAL_HOOKS)}")
    return getattr(method, name, None)


@torch.no_grad()
def method_inputs(method: nn.Module, views: Callable[[Tensor, torch.Generator], list[Tensor]],
                  x: Tensor, generator: torch.Generator, channels_last: bool = False,
                  texts: Sequence[Tensor] = ()) -> list[Tensor]:
    """The method's inputs for a uint8 batch `x` [B, C, H, W]: the views that `views` (a view
    set) draws from `generator`, then the batch's caption tokens and their validity (`texts`,
    for a method with `make_tokenizer`), then, for a method with `prepare`, what it makes of
    them from the same generator. channels_last: image batches (not targets or masks) in NHWC.
    Training and every evaluation of a method's loss go through here."""
    out = [*views(x, generator), *texts]
    prepare = hook(method, "prepare")
    if prepare:
        out = prepare(out, generator)
    if channels_last:
        out = [v.contiguous(memory_format=torch.channels_last)
               if v.dim() == 4 and v.is_floating_point() else v for v in out]
    return out


def param_sets(method: nn.Module) -> list[ParamSet]:
    """The method's parameter sets (its `param_sets()`, or the single set "model"), checked:
    names are distinct, no parameter is in two sets, and every trainable one is in a set."""
    declared = hook(method, "param_sets")
    sets = declared() if declared else [ParamSet("model", [method], method.forward)]
    if not sets or len({s.name for s in sets}) != len(sets):
        raise ValueError(f"{type(method).__name__}.param_sets() must give sets with distinct names")
    owner: dict[int, str] = {}
    for s in sets:
        for p in set_parameters(s):
            if id(p) in owner:
                raise ValueError(f"{type(method).__name__}: a parameter is in both parameter sets "
                                 f"{owner[id(p)]!r} and {s.name!r}")
            owner[id(p)] = s.name
    stray = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in owner]
    if stray:
        raise ValueError(f"{type(method).__name__}: trainable parameters in no parameter set: "
                         f"{', '.join(stray[:3])}")
    return sets


def set_parameters(s: ParamSet) -> list[nn.Parameter]:
    """The set's trainable parameters, each once, in module order."""
    seen, out = set(), []
    for m in s.modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def as_float(value: Any) -> float:
    """A metric value (0-dim tensor or number) as a float: a host sync for a device tensor."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
