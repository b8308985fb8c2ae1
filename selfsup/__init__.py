"""selfsup: self-supervised pretraining of image encoders, and honest measurements of them."""

__version__ = "0.1.0"
