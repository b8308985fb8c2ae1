"""The shared losses against direct computations: NT-Xent (SimCLR's equation 1) and
cross-entropy with accuracy."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import cross_entropy_accuracy, global_nt_xent, multi_view_nt_xent, nt_xent


def reference_nt_xent(z1, z2, tau):
    """Eq. 1 of Chen et al. 2020, written out with loops: l(i, j) over all 2N ordered pairs."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(0)
    for b, d, tau in [(4, 8, 0.5), (7, 3, 0.2), (16, 32, 0.1)]:
        z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
        loss, acc = nt_xent(z1, z2, tau)
        assert abs(loss.item() - reference_nt_xent(z1, z2, tau)) < 1e-5
        assert 0.0 <= acc.item() <= 1.0


def test_nt_xent_is_low_for_matching_views_and_symmetric():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 16, generator=g)
    matched, acc = nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.1)
    unmatched, _ = nt_xent(z, torch.randn(32, 16, generator=g), 0.1)
    assert matched < unmatched and acc.item() == 1.0
    a, _ = nt_xent(z[:8], z[8:16], 0.3)
    b, _ = nt_xent(z[8:16], z[:8], 0.3)
    assert torch.allclose(a, b)


def test_nt_xent_with_offset_equals_the_global_loss():
    """A rank's share computed against the gathered batch: the mean over ranks is the global loss."""
    g = torch.Generator().manual_seed(2)
    b, w = 5, 3
    z1s = [torch.randn(b, 8, generator=g) for _ in range(w)]
    z2s = [torch.randn(b, 8, generator=g) for _ in range(w)]
    z_all = torch.cat([torch.nn.functional.normalize(torch.cat([a, c]), dim=1) for a, c in zip(z1s, z2s)])
    per_rank = [nt_xent(z1s[r], z2s[r], 0.2, z_all, offset=r * 2 * b)[0] for r in range(w)]
    # Reference: anchors and their negatives over the whole global batch.
    z = z_all.double()
    total = 0.0
    for r in range(w):
        for i in range(2 * b):
            a = r * 2 * b + i
            p = r * 2 * b + (i + b) % (2 * b)
            logits = [float(z[a] @ z[k]) / 0.2 for k in range(w * 2 * b) if k != a]
            total += -(float(z[a] @ z[p]) / 0.2 - math.log(sum(math.exp(x) for x in logits)))
    assert abs(torch.stack(per_rank).mean().item() - total / (w * 2 * b)) < 1e-5


def test_global_nt_xent_on_one_process_is_nt_xent():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.equal(global_nt_xent([z1, z2], 0.2)[0], nt_xent(z1, z2, 0.2)[0])


def test_cross_entropy_accuracy():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.5]], dtype=torch.bfloat16)
    targets = torch.tensor([0, 1, 2])
    loss, acc = cross_entropy_accuracy(logits, targets)
    assert loss.dtype == torch.float32  # computed in float32 whatever the autocast dtype
    assert math.isclose(loss.item(), F.cross_entropy(logits.float(), targets).item(), rel_tol=1e-6)
    assert math.isclose(acc.item(), 2 / 3, rel_tol=1e-6)


def reference_multi_view(views, tau, z_all=None, offset=0):
    """Loops: every anchor against each other view of its image, over all other rows."""
    v, b = len(views), views[0].shape[0]
    z = torch.nn.functional.normalize(torch.cat(views).double(), dim=1)
    z_all = z if z_all is None else z_all.double()
    terms = []
    for a in range(v * b):
        den = sum(math.exp(float(z[a] @ z_all[k]) / tau) for k in range(len(z_all)) if k != a + offset)
        for j in range(v):
            if j != a // b:
                p = offset + j * b + a % b
                terms.append(-(float(z[a] @ z_all[p]) / tau - math.log(den)))
    return sum(terms) / len(terms)


def test_multi_view_nt_xent_matches_loops_and_is_nt_xent_for_two_views():
    g = torch.Generator().manual_seed(4)
    for v, b, tau in [(3, 4, 0.2), (4, 5, 0.5), (6, 2, 0.1)]:
        views = [torch.randn(b, 8, generator=g) for _ in range(v)]
        loss, acc = multi_view_nt_xent(views, tau)
        assert abs(loss.item() - reference_multi_view(views, tau)) < 1e-5
        assert 0.0 <= acc.item() <= 1.0
    z1, z2 = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    assert abs(multi_view_nt_xent([z1, z2], 0.3)[0].item() - reference_nt_xent(z1, z2, 0.3)) < 1e-5
    # Identical views of distinct images: every anchor finds a positive first.
    base = torch.randn(16, 32, generator=g)
    assert multi_view_nt_xent([base, base + 1e-3, base - 1e-3], 0.1)[1].item() == 1.0
    with pytest.raises(ValueError, match="at least 2 views"):
        multi_view_nt_xent([base], 0.1)


def test_multi_view_nt_xent_with_offset_is_a_ranks_share_of_the_global_loss():
    g = torch.Generator().manual_seed(5)
    v, b, w = 3, 4, 2
    ranks = [[torch.randn(b, 6, generator=g) for _ in range(v)] for _ in range(w)]
    z_all = torch.cat([torch.nn.functional.normalize(torch.cat(views), dim=1) for views in ranks])
    for r, views in enumerate(ranks):
        got = multi_view_nt_xent(views, 0.2, z_all, offset=r * v * b)[0].item()
        assert abs(got - reference_multi_view(views, 0.2, z_all, r * v * b)) < 1e-5
