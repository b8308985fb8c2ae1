"""Evaluators: on a frozen backbone (features extracted once into a `FeatureCache`, then k-NN and
linear probes on them), and end-to-end fine-tuning."""
from selfsup.eval.features import FeatureCache, extract_features
from selfsup.eval.fewshot import FewshotConfig, fewshot_probe
from selfsup.eval.finetune import FinetuneConfig, finetune
from selfsup.eval.knn import KNNConfig, knn_accuracy, knn_votes
from selfsup.eval.linear import LinearConfig, linear_probe
from selfsup.eval.subsets import stratified_subset

__all__ = ["FeatureCache", "extract_features", "knn_accuracy", "knn_votes", "linear_probe", "finetune",
           "stratified_subset", "KNNConfig", "LinearConfig", "FinetuneConfig", "FewshotConfig", "fewshot_probe"]
