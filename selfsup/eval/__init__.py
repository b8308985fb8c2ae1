"""Evaluators: on a frozen backbone (extract features once, then k-NN and linear probes on them),
and end-to-end fine-tuning."""
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import FinetuneConfig, finetune
from selfsup.eval.knn import KNNConfig, knn_accuracy, knn_votes
from selfsup.eval.linear import LinearConfig, linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_votes", "linear_probe", "finetune", "KNNConfig",
           "LinearConfig", "FinetuneConfig"]
