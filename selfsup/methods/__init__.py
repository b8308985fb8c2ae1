"""The method registry: name -> method class (an nn.Module with a `config_class`).

A method is one file here plus one line below plus its recipes; the contract it follows (hooks,
when the trainer calls them, the rules for metrics, DDP and per-step state) is written once, in
`selfsup/protocol.py`. The pieces methods share are in `selfsup/parts/` and `selfsup/losses.py`.
"""

from selfsup.methods.barlow_twins import BarlowTwins
from selfsup.methods.beit import BEiT
from selfsup.methods.byol import BYOL
from selfsup.methods.clip import CLIP
from selfsup.methods.colorization import Colorization
from selfsup.methods.context_encoder import ContextEncoder
from selfsup.methods.damaged_jigsaw import DamagedJigsaw
from selfsup.methods.dcgan import DCGAN
from selfsup.methods.dino import DINO
from selfsup.methods.ibot import IBOT
from selfsup.methods.igpt import IGPT
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.mocov2 import MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.relpatch import RelPatch
from selfsup.methods.rotation import Rotation
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.splitbrain import SplitBrain
from selfsup.methods.splitmask import SplitMask
from selfsup.methods.swav import SwAV
from selfsup.methods.vicreg import VICReg

METHODS = {
    "barlow_twins": BarlowTwins,
    "beit": BEiT,
    "byol": BYOL,
    "clip": CLIP,
    "colorization": Colorization,
    "context_encoder": ContextEncoder,
    "damaged_jigsaw": DamagedJigsaw,
    "dcgan": DCGAN,
    "dino": DINO,
    "ibot": IBOT,
    "igpt": IGPT,
    "jigsaw": Jigsaw,
    "mae": MAE,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "relpatch": RelPatch,
    "rotation": Rotation,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "splitbrain": SplitBrain,
    "splitmask": SplitMask,
    "swav": SwAV,
    "vicreg": VICReg,
}


def build_method(cfg, backbone):
    """The registered method named by `cfg.name`, around `backbone`."""
    return METHODS[cfg.name](cfg, backbone)
