"""Henze-Zirkler statistic: a hand computation, pingouin, affine invariance, power, gradients, bad input."""

import math

import numpy as np
import pytest
import torch

from pyro_mapa.diagnostics import henze_zirkler, henze_zirkler_beta, henze_zirkler_test

F64 = torch.float64


def hand_hz(rows, beta=None):
    """HZ from its definition, float64, explicit loops, no linear-algebra library (d = 2 only)."""
    n, d = len(rows), len(rows[0])
    assert d == 2
    mean = [sum(r[i] for r in rows) / n for i in range(d)]
    s = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) / n for j in range(d)] for i in range(d)]
    det = s[0][0] * s[1][1] - s[0][1] * s[1][0]
    inv = [[s[1][1] / det, -s[0][1] / det], [-s[1][0] / det, s[0][0] / det]]

    def maha(u):
        return sum(u[i] * inv[i][j] * u[j] for i in range(d) for j in range(d))

    if beta is None:
        beta = 1 / math.sqrt(2) * ((2 * d + 1) / 4) ** (1 / (d + 4)) * n ** (1 / (d + 4))
    b2 = beta**2
    pairs = 0.0
    for j in range(n):
        for k in range(n):
            pairs += math.exp(-b2 / 2 * maha([rows[j][i] - rows[k][i] for i in range(d)]))
    single = 0.0
    for j in range(n):
        single += math.exp(-b2 / (2 * (1 + b2)) * maha([rows[j][i] - mean[i] for i in range(d)]))
    return n * (pairs / n**2 - 2 * (1 + b2) ** (-d / 2) * single / n + (1 + 2 * b2) ** (-d / 2))


SMALL = [[0.3, -1.2], [1.1, 0.4], [-0.7, 0.9], [2.0, 1.5], [-1.4, -0.3], [0.2, 0.1], [0.9, -2.2]]


def test_matches_a_hand_computation():
    z = torch.tensor(SMALL, dtype=F64)
    assert float(henze_zirkler(z)) == pytest.approx(hand_hz(SMALL), rel=1e-13)
    assert float(henze_zirkler(z, beta=0.7)) == pytest.approx(hand_hz(SMALL, beta=0.7), rel=1e-13)
    # The two differ, so the beta passed is the beta used.
    assert abs(hand_hz(SMALL, 0.7) - hand_hz(SMALL)) > 1e-3
    assert henze_zirkler_beta(7, 2) == pytest.approx(1 / math.sqrt(2) * (5 * 7 / 4) ** (1 / 6), rel=1e-15)


def _samples():
    g = np.random.default_rng(1)
    return [
        g.normal(size=(40, 2)),
        g.normal(size=(300, 2)) @ np.array([[2.0, 0.3], [0.0, 0.5]]) + 3,
        g.uniform(size=(60, 3)),
        g.exponential(size=(25, 4)),
        np.concatenate([g.normal(-2, 1, (50, 2)), g.normal(2, 1, (50, 2))]),
    ]


@pytest.mark.parametrize("i", range(5))
def test_agrees_with_pingouin(i):
    pg = pytest.importorskip("pingouin")
    x = _samples()[i]
    ref = pg.multivariate_normality(x)
    got = henze_zirkler_test(torch.tensor(x))
    assert float(got.statistic) == pytest.approx(ref.hz, rel=1e-10)
    assert float(got.p_value) == pytest.approx(ref.pval, rel=1e-8, abs=1e-300)
    # float32 input: same statistic to float32 precision, float32 output.
    got32 = henze_zirkler(torch.tensor(x, dtype=torch.float32))
    assert got32.dtype == torch.float32
    assert float(got32) == pytest.approx(ref.hz, rel=2e-4)


def test_affine_invariance():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(80, 3, generator=g, dtype=F64) ** 2
    a = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.1, 3.0], [1.0, -1.0, 0.2]], dtype=F64)
    b = torch.tensor([5.0, -3.0, 100.0], dtype=F64)
    assert abs(float(torch.linalg.det(a))) > 0.1
    ref = henze_zirkler(z)
    torch.testing.assert_close(henze_zirkler(z @ a + b), ref, rtol=1e-10, atol=0)
    # Not invariant under a nonlinear map (so the check above could fail).
    assert abs(float(henze_zirkler(torch.exp(z))) - float(ref)) > 1e-3


def test_larger_for_non_normal_samples():
    g = torch.Generator().manual_seed(3)
    normal = [float(henze_zirkler(torch.randn(200, 2, generator=g, dtype=F64))) for _ in range(5)]
    uniform = [float(henze_zirkler(torch.rand(200, 2, generator=g, dtype=F64))) for _ in range(5)]
    signs = torch.where(torch.rand(200, 1, generator=g) < 0.5, -3.0, 3.0).to(F64)
    bimodal = [float(henze_zirkler(torch.randn(200, 2, generator=g, dtype=F64) + signs))]
    assert max(normal) < 1.0 < min(uniform) and max(normal) < bimodal[0]
    # p-values: normal samples are not rejected, uniform ones are.
    assert float(henze_zirkler_test(torch.randn(200, 2, generator=g, dtype=F64)).p_value) > 0.01
    assert float(henze_zirkler_test(torch.rand(200, 2, generator=g, dtype=F64)).p_value) < 1e-4


def test_gradient():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(12, 2, generator=g, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(henze_zirkler, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda u: henze_zirkler(u, beta=0.9), (z,), eps=1e-6, atol=1e-8)
    (grad,) = torch.autograd.grad(henze_zirkler(z), z)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-4
    # Invariance implies the gradient is orthogonal to translations: sum over rows is 0.
    torch.testing.assert_close(grad.sum(0), torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    z32 = torch.randn(300, 3, generator=g).requires_grad_()
    (g32,) = torch.autograd.grad(henze_zirkler(z32), z32)
    assert torch.isfinite(g32).all()


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.zeros(1, 2, dtype=F64), ValueError, "z must have at least 2 rows"),
        (torch.zeros(5, dtype=F64), ValueError, "z must have shape"),
        (torch.zeros(3, 2, 2, dtype=F64), ValueError, "z must have shape"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [3.0, 1.0]]), ValueError, "z contains NaN"),
        (torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]), ValueError, "z has a singular"),
        (torch.tensor([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]), ValueError, "z has a singular"),
        (torch.tensor([[1.0, 2.0], [2.0, 5.0]]), ValueError, "z has a singular"),
        (torch.ones(4, 2, dtype=torch.long), TypeError, "z must be a floating"),
        ([[1.0, 2.0], [0.0, 1.0]], TypeError, "z must be a torch.Tensor"),
    ],
)
def test_bad_input(bad, exc, words):
    with pytest.raises(exc, match=words):
        henze_zirkler(bad)
    with pytest.raises(exc, match=words):
        henze_zirkler_test(bad)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be a positive"):
        henze_zirkler(torch.tensor(SMALL, dtype=F64), beta=beta)
    with pytest.raises(TypeError, match="beta must be"):
        henze_zirkler(torch.tensor(SMALL, dtype=F64), beta="0.5")
