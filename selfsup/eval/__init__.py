"""Evaluators on a frozen backbone: extract features once, then k-NN and linear probes on them."""
from selfsup.eval.features import extract_features
from selfsup.eval.knn import KNNConfig, knn_accuracy, knn_votes
from selfsup.eval.linear import LinearConfig, linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_votes", "linear_probe", "KNNConfig", "LinearConfig"]
