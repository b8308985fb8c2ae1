"""Which device a run uses and at which precision: the one place that decides, for the trainer,
the evaluators and the command line alike."""

from __future__ import annotations

import contextlib

import torch

from selfsup.distributed import local_rank
from selfsup.errors import ConfigError

# Autocast dtypes by name; "fp32" is no autocast.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto`: this process's GPU under torchrun (LOCAL_RANK), else the GPU, else Apple's MPS,
    else the CPU. Anything else is taken as a torch device name (cpu, cuda, cuda:1, mps)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA GPU is visible to torch here "
                          f"(torch {torch.__version__}); use auto or cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name}: there are {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device=mps: Apple's MPS is not available here; use auto or cpu")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """avx512_bf16 or AMX: the CPUs on which bf16 autocast is faster than fp32, not slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def describe_device(device: torch.device) -> str:
    """The device in words, for benchmark tables: a GPU's name, or the CPU's model and its
    AVX / AMX flags (which decide the precision `auto` picks and the speed of each)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return str(device)
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = {x for x in value.split() if x.startswith(("avx", "amx"))}
    except OSError:  # not Linux
        pass
    return f"{model} ({' '.join(sorted(flags)) or 'no AVX flags read'})"


def resolve_precision(name: str, device: torch.device) -> str:
    """"bf16" or "fp32" for a `trainer.precision` setting: auto means bf16 on GPUs that support it
    and on CPUs with native bf16 arithmetic, fp32 elsewhere (emulated bf16 is slower than fp32)."""
    if name in ("fp32", "bf16"):
        return name
    if name != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {name!r}")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device | str, precision: str):
    """Autocast to `precision` ("fp32": a no-op context) on `device`'s type."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
