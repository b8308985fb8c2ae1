"""The training loop shared by every method, and what it needs: optimizers, schedules,
checkpoints, logging, distributed helpers."""
