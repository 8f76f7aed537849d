"""Stealing losses: definitions checked against slow reference formulas, shapes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from shared.losses import STEALING_LOSSES, barlow_twins, infonce, mse, nt_xent, simsiam, soft_nn, supcon, wasserstein


def _pair(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, d, generator=g), torch.rand(b, d, generator=g)


def test_mse_and_infonce_reference():
    s, v = _pair()
    assert mse(s, v).item() == pytest.approx(((s - v) ** 2).mean().item())
    assert infonce(s, v).item() == pytest.approx(nt_xent(s, v, 0.07).item())


def test_soft_nn_matches_loop():
    s, v = _pair(b=4, d=3)
    t = 0.5
    x = torch.cat([s, v])
    lab = list(range(4)) * 2
    total = 0.0
    for i in range(8):
        num = sum(math.exp(-((x[i] - x[j]) ** 2).sum().item() / t) for j in range(8) if j != i and lab[j] == lab[i])
        den = sum(math.exp(-((x[i] - x[j]) ** 2).sum().item() / t) for j in range(8) if j != i)
        total += -math.log(num / den)
    assert soft_nn(s, v, t).item() == pytest.approx(total / 8, rel=1e-5)


def test_soft_nn_rewards_matching():
    s, v = _pair(d=16)
    assert soft_nn(v + 0.01 * s, v, temperature=1.0) < soft_nn(s, v, temperature=1.0)


def test_wasserstein_is_cdf_l1():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 1.0]])
    # all mass moves two bins: CDF difference 1 in two bins
    assert wasserstein(a, b).item() == pytest.approx(2.0)
    assert wasserstein(b * 3, b).item() == pytest.approx(0.0, abs=1e-6)  # scale-free histograms


def test_supcon_uses_labels():
    s, v = _pair(b=8, d=8)
    y_same = torch.zeros(8, dtype=torch.long)
    y_diff = torch.arange(8)
    assert supcon(s, v, y_diff).item() == pytest.approx(infonce(s, v).item(), rel=1e-5)  # one positive each
    assert supcon(s, v, y_same).item() != pytest.approx(supcon(s, v, y_diff).item())
    with pytest.raises(ValueError, match="one label per row"):
        supcon(s, v, torch.zeros(3, dtype=torch.long))


def test_barlow_identity_is_small():
    s, v = _pair(b=64, d=8)
    assert barlow_twins(v, v).item() < 0.05 * barlow_twins(s, v).item() + 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins(s[:1], v[:1])


def test_simsiam_stops_gradient_on_targets():
    s, v = _pair()
    s.requires_grad_(True)
    p = s * 2
    loss = simsiam(p, v, v, s)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert simsiam(v, v, v, v).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("fn", [mse, infonce, soft_nn, wasserstein, barlow_twins])
def test_shape_errors(fn):
    with pytest.raises(ValueError):
        fn(torch.zeros(4, 3), torch.zeros(4, 5))


def test_registry_names():
    assert set(STEALING_LOSSES) == {"mse", "infonce", "softnn", "wasserstein", "supcon", "barlow", "simsiam"}


def test_nt_xent_prefers_aligned_pairs():
    a = torch.randn(32, 16)
    assert nt_xent(a, a + 0.01 * torch.randn_like(a)) < nt_xent(a, torch.randn(32, 16))
    with pytest.raises(ValueError):
        nt_xent(a, a[:5])
