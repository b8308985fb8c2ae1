"""`selfsup pretrain` that kills itself with SIGKILL at a chosen moment (tests/test_faults.py).

    python kill_worker.py MOMENT N -- <selfsup pretrain arguments>

MOMENT is where the N-th (1-based) occurrence is cut short:
    step        after the N-th backward pass, before its optimizer step
    checkpoint  in the N-th checkpoint write, its weights file written and its state not yet
    evaluation  in the N-th online evaluation, its features extracted and no result yet
Nothing is mocked: the real command runs and dies as it would under `kill -9`.
"""

import os
import signal
import sys

import selfsup.train.checkpoint as checkpoint
import selfsup.train.trainer as trainer
from selfsup.cli import main


def die_on(module, name: str, nth: int, before: bool) -> None:
    """Wrap module.name so that its nth call SIGKILLs the process (before or after the real call)."""
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and before:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(module, name, wrapped)


if __name__ == "__main__":
    moment, nth, rest = sys.argv[1], int(sys.argv[2]), sys.argv[sys.argv.index("--") + 1:]
    if moment == "step":  # a set's loss.backward() has run; its optimizer.step() has not
        real_backward = trainer.backward_step
        calls = [0]

        def backward_then_die(loss, optimizer, params, *args, **kwargs):
            calls[0] += 1
            if calls[0] == nth:
                loss.backward()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_backward(loss, optimizer, params, *args, **kwargs)

        trainer.backward_step = backward_then_die
    elif moment == "checkpoint":
        die_on(checkpoint, "save_file", nth, before=False)
    elif moment == "evaluation":
        die_on(trainer.FeatureCache, "features", nth, before=False)
    else:
        raise SystemExit(f"unknown moment {moment}")
    sys.exit(main(["pretrain", *rest]))
