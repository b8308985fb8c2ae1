"""Method registry: name -> nn.Module class with a `config_class` dataclass.

A method owns its backbone (the encoder that is exported and evaluated, `.backbone`) and its
heads, and has:
- `forward(views, progress) -> (loss, metrics)`: views are the float batches of `view_configs`
  in order; `progress` (a `schedules.Progress`) drives temperature and freeze schedules;
- `on_step_end(progress)`: called once after each optimizer step; per-step state (EMA teachers,
  queues, centres) is updated here and nowhere else;
- optionally `prepare(views, generator) -> list[Tensor]`: called without gradients after the
  views are drawn, with the same seeded generator; pretext tasks turn views into inputs plus
  targets (rotations, tiles) and masked models draw their masks here, so every draw is fixed by
  the seed, rank and step (see `Trainer.make_views`);
- optionally `on_after_backward(progress)`: called between backward and the optimizer step
  (DINO drops its last layer's gradients there during the first epoch).
Shared pieces: `heads.mlp`, `ema` (teachers), `queue.FeatureQueue`, `schedules`.
"""

from selfsup.methods.beit import BEiT
from selfsup.methods.byol import BYOL
from selfsup.methods.damaged_jigsaw import DamagedJigsaw
from selfsup.methods.dino import DINO
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.mocov2 import MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.relpatch import RelPatch
from selfsup.methods.rotation import Rotation
from selfsup.methods.simclr import SimCLR
from selfsup.methods.splitmask import SplitMask

METHODS = {
    "beit": BEiT,
    "byol": BYOL,
    "damaged_jigsaw": DamagedJigsaw,
    "dino": DINO,
    "jigsaw": Jigsaw,
    "mae": MAE,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "relpatch": RelPatch,
    "rotation": Rotation,
    "simclr": SimCLR,
    "splitmask": SplitMask,
}


def build_method(cfg, backbone):
    """The registered method named by `cfg.name`, around `backbone`."""
    return METHODS[cfg.name](cfg, backbone)
