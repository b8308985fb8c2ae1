"""selfsup: self-supervised pretraining of image encoders, and honest measurements of them."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """The Python API (selfsup/api.py: load, Encoder, pretrain, evaluate), imported on first use
    so that `import selfsup` stays light."""
    if name in ("load", "Encoder", "pretrain", "evaluate"):
        from selfsup import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
