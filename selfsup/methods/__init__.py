"""Method registry: name -> nn.Module class with a `config_class` dataclass.

A method owns its backbone and heads and maps a list of views to `(loss, metrics)`; per-step
state (EMA teachers, queues, centres) is updated in `on_step_end(step, total_steps)`, called
once after each optimizer step.
"""

from selfsup.methods.simclr import SimCLR

METHODS = {
    "simclr": SimCLR,
}


def build_method(cfg, backbone):
    """The registered method named by `cfg.name`, around `backbone`."""
    return METHODS[cfg.name](cfg, backbone)
