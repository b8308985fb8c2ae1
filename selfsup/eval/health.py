"""Signs of a collapsed representation, from the features of a set of images.

- std: the per-dimension standard deviation of the L2-normalised features, averaged over
  dimensions (SimSiam, Chen & He 2021, §4.1): 0 when every image maps to one point, about
  1/sqrt(D) for features spread over the sphere; `std_ratio` is std * sqrt(D), about 1 when healthy.
- erank: the effective rank of the feature matrix, exp of the entropy of its normalised singular
  values (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): 1 when all features lie on one line,
  up to D; a low value against D is the dimensional collapse that the std can miss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Below these a representation is called collapsed: the features of different images are nearly
# the same point (std_ratio), or lie along one or two directions (erank).
COLLAPSED_STD_RATIO = 0.05
COLLAPSED_ERANK = 2.0


@torch.no_grad()
def embedding_health(features: Tensor) -> dict:
    """features: [N, D] -> {"std", "std_ratio", "erank", "dim", "n", "collapsed"}."""
    x = features.detach().float().cpu()
    n, d = x.shape
    std = F.normalize(x, dim=1).std(0).mean().item() if n > 1 else 0.0
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-12)
    erank = math.exp(-(p * torch.log(p.clamp_min(1e-12))).sum().item()) if s.sum() > 0 else 0.0
    ratio = std * math.sqrt(d)
    return {"std": std, "std_ratio": ratio, "erank": erank, "dim": d, "n": n,
            "collapsed": bool(ratio < COLLAPSED_STD_RATIO or erank < COLLAPSED_ERANK)}


def verdict(h: dict) -> str:
    """The health in plain words."""
    if h["collapsed"]:
        return (f"collapsed: the features of different images are nearly the same "
                f"(normalised std {h['std_ratio']:.3f} of a healthy 1, effective rank "
                f"{h['erank']:.1f} of {h['dim']} dimensions); the encoder has learnt little that "
                f"tells images apart. Typical causes: a learning rate too high or too low, a missing "
                f"predictor or stop-gradient, a temperature or centring set wrong.")
    return (f"healthy: normalised std {h['std_ratio']:.2f} (1 is fully spread), effective rank "
            f"{h['erank']:.1f} of {h['dim']} dimensions")
