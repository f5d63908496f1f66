"""GaussianCopulaPrior: a monotone map T from N(0, 1) onto the empirical distribution of 1-D codes."""

import math

import pytest
import torch

from pyro_mapa.priors import GaussianCopulaPrior


def ks_two_sample(a, b):
    """Two-sample Kolmogorov-Smirnov statistic sup_t |F_a(t) - F_b(t)|."""
    a, b = torch.sort(a.reshape(-1).double()).values, torch.sort(b.reshape(-1).double()).values
    t = torch.cat([a, b])
    fa = torch.searchsorted(a, t, right=True).double() / len(a)
    fb = torch.searchsorted(b, t, right=True).double() / len(b)
    return float((fa - fb).abs().max())


def exponential_codes(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.log(torch.rand(n, generator=g, dtype=torch.float64))


def bimodal_codes(n=3000, seed=1):
    g = torch.Generator().manual_seed(seed)
    which = torch.rand(n, generator=g) < 0.3
    a = -2.0 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    b = 3.0 + 1.0 * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.where(which, a, b)


def test_knots_are_standardized_normal_scores_and_sorted_codes():
    codes = exponential_codes(n=500)
    prior = GaussianCopulaPrior(codes)
    torch.testing.assert_close(prior.z_knots, torch.sort(codes).values, rtol=0, atol=0)
    n = len(codes)
    raw = torch.special.ndtri(torch.arange(1, n + 1, dtype=torch.float64) / (n + 1))
    torch.testing.assert_close(prior.u_knots, (raw - raw.mean()) / raw.std())
    assert float(prior.u_knots.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(prior.u_knots.std()) == pytest.approx(1.0, abs=1e-12)
    assert bool((prior.u_knots[1:] > prior.u_knots[:-1]).all())


@pytest.mark.parametrize("shape", [(400,), (400, 1)])
@pytest.mark.parametrize("maker", [exponential_codes, bimodal_codes], ids=["exponential", "bimodal"])
def test_round_trip_knots_return_sorted_codes(maker, shape):
    codes = maker(n=400).reshape(shape)
    prior = GaussianCopulaPrior(codes)
    out = prior.transform(prior.u_knots)
    assert out.shape == prior.u_knots.shape
    # Exactly the sorted codes: T interpolates through the knots.
    assert torch.equal(out, torch.sort(codes.reshape(-1)).values)


def test_round_trip_float32_codes():
    codes = bimodal_codes(n=257).float()
    prior = GaussianCopulaPrior(codes)
    assert torch.equal(prior.transform(prior.u_knots), torch.sort(codes).values)


def test_round_trip_exact_despite_cancellation():
    # Knot j is hit with t = 1 in the segment (j-1, j); z0 + 1 * (z1 - z0) loses z1 when z1 << z0.
    codes = torch.tensor([-1.0, 1e-17, 1.0], dtype=torch.float64)
    prior = GaussianCopulaPrior(codes)
    assert torch.equal(prior.transform(prior.u_knots), codes)


def test_round_trip_with_tied_codes():
    codes = torch.tensor([0.5, 0.5, -1.0, 2.0, 0.5, 2.0, -3.0], dtype=torch.float64)
    prior = GaussianCopulaPrior(codes)
    assert torch.equal(prior.transform(prior.u_knots), torch.sort(codes).values)


@pytest.mark.parametrize("maker", [exponential_codes, bimodal_codes], ids=["exponential", "bimodal"])
def test_transform_is_monotone_non_decreasing(maker):
    prior = GaussianCopulaPrior(maker(n=1000))
    u = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    z = prior.transform(u)
    assert torch.isfinite(z).all()
    assert bool((z[1:] >= z[:-1]).all())
    # Linear extension past the ends: the outermost segment's slope continues.
    uk, zk = prior.u_knots, prior.z_knots
    lo = zk[0] + (u[0] - uk[0]) * (zk[1] - zk[0]) / (uk[1] - uk[0])
    hi = zk[-2] + (u[-1] - uk[-2]) * (zk[-1] - zk[-2]) / (uk[-1] - uk[-2])
    assert float(z[0]) == pytest.approx(float(lo), rel=1e-12)
    assert float(z[-1]) == pytest.approx(float(hi), rel=1e-12)


def test_transform_interpolates_linearly_between_knots():
    prior = GaussianCopulaPrior(torch.tensor([0.0, 10.0, 11.0, 30.0], dtype=torch.float64))
    uk, zk = prior.u_knots, prior.z_knots
    for j in range(3):
        for t in (0.25, 0.5, 0.9):
            u = uk[j] + t * (uk[j + 1] - uk[j])
            assert float(prior.transform(u.reshape(1))) == pytest.approx(float(zk[j] + t * (zk[j + 1] - zk[j])))


def test_transform_keeps_shape():
    prior = GaussianCopulaPrior(exponential_codes(n=100))
    u = torch.randn(3, 4, 1, dtype=torch.float64)
    assert prior.transform(u).shape == (3, 4, 1)
    torch.testing.assert_close(prior.transform(u).reshape(-1), prior.transform(u.reshape(-1)))


@pytest.mark.parametrize("maker", [exponential_codes, bimodal_codes], ids=["exponential", "bimodal"])
def test_samples_match_code_distribution(maker):
    codes = maker(n=3000)
    prior = GaussianCopulaPrior(codes)
    g = torch.Generator().manual_seed(7)
    z = prior.sample(torch.Size([20000]), generator=g)
    assert z.shape == (20000, 1)
    assert ks_two_sample(z, codes) < 0.05
    # And against fresh draws from the codes' own law.
    assert ks_two_sample(z, maker(n=20000, seed=99)) < 0.05


def test_samples_of_exponential_codes_are_not_normal():
    # The KS check has power: the prior's samples are far from a Gaussian with the codes' moments.
    codes = exponential_codes(n=3000)
    prior = GaussianCopulaPrior(codes)
    z = prior.sample(torch.Size([20000]), generator=torch.Generator().manual_seed(3))
    gauss = codes.mean() + codes.std() * torch.randn(20000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert ks_two_sample(z, gauss) > 0.05


def test_sample_is_reproducible_with_generator():
    prior = GaussianCopulaPrior(bimodal_codes(n=500))
    a = prior.sample(torch.Size([2, 3]), generator=torch.Generator().manual_seed(11))
    b = prior.sample(torch.Size([2, 3]), generator=torch.Generator().manual_seed(11))
    assert a.shape == (2, 3, 1)
    assert torch.equal(a, b)
    assert prior.sample().shape == (1,)


def test_standard_normal_codes_give_near_identity():
    codes = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prior = GaussianCopulaPrior(codes)
    u = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    # Sample-quantile error at |u| = 1.5 has sd sqrt(p(1-p)/N)/phi(u) ~ 0.014.
    assert float((prior.transform(u) - u).abs().max()) < 0.06
    u2 = torch.linspace(-2.5, 2.5, 301, dtype=torch.float64)
    assert float((prior.transform(u2) - u2).abs().max()) < 0.15


def test_positive_codes_give_positive_samples_in_the_bulk():
    prior = GaussianCopulaPrior(exponential_codes(n=2000))
    u = torch.linspace(-3, 3, 101, dtype=torch.float64)
    assert bool((prior.transform(u) > 0).all())


@pytest.mark.parametrize(
    "codes",
    [torch.randn(10, 2), torch.randn(10, 3), torch.randn(4, 5, 2)],
    ids=["d2", "d3", "batched-d2"],
)
def test_multi_dimensional_codes_raise(codes):
    with pytest.raises(ValueError, match="for 1-D codes"):
        GaussianCopulaPrior(codes)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_codes_raise(bad):
    codes = torch.randn(10)
    codes[3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        GaussianCopulaPrior(codes)


@pytest.mark.parametrize("codes", [torch.tensor([1.5]), torch.zeros(1, 1), torch.zeros(0)], ids=["one", "one-2d", "zero"])
def test_fewer_than_two_codes_raise(codes):
    with pytest.raises(ValueError, match="at least two codes"):
        GaussianCopulaPrior(codes)
