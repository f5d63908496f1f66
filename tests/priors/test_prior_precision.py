"""KDEPrior and GaussianCopulaPrior on degenerate, huge, tiny and half-precision codes, against float64 references."""

import math

import pytest
import torch

from pyro_mapa.priors import GaussianCopulaPrior, KDEPrior

F64 = torch.float64


def reference_kde(codes, z, factor):
    """float64 log of (1/N) Σ_i N(z; c_i, h² Σ̂) with Σ̂ from the exact centred codes (no standardization)."""
    c = codes.to(F64)
    centred = c - c.mean(0)
    cov = factor**2 * centred.T @ centred / (len(c) - 1)
    mvn = torch.distributions.MultivariateNormal(c, covariance_matrix=cov)
    return torch.logsumexp(mvn.log_prob(z.to(F64).unsqueeze(-2)), -1) - math.log(len(c))


def _degenerate(seed, kind, dtype):
    g = torch.Generator().manual_seed(seed)
    n = 5 + seed % 60
    z = torch.randn(n, 1, generator=g, dtype=F64)
    w = torch.randn(n, 1, generator=g, dtype=F64)
    codes = {
        "2z": torch.cat([z, 2 * z], 1),  # the case: exactly on a line
        "-3z+1": torch.cat([z, -3 * z + 1], 1),  # on a line up to the rounding of -3z + 1
        "plane": torch.cat([z, w, 0.3 * z - 1.7 * w], 1),  # a plane in 3-D
        "constant": torch.cat([z, torch.full_like(z, 4.0)], 1),
        "scaled line": 1e20 * torch.cat([z, 0.5 * z], 1),
    }[kind]
    return codes.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["2z", "-3z+1", "plane", "constant", "scaled line"])
def test_codes_on_a_subspace_are_refused_for_every_seed(kind, dtype):
    """Before: KDEPrior(cat([z, 2z])) was accepted for 43-45 of 100 seeds. Now: 200 of 200 refused."""
    for seed in range(200):
        with pytest.raises(ValueError, match="singular covariance"):
            KDEPrior(_degenerate(seed, kind, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_rank_codes_are_accepted_for_every_seed(dtype):
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        n = 5 + seed % 60
        d = 1 + seed % 3
        KDEPrior(torch.randn(n, d, generator=g, dtype=F64).to(dtype))
        # strongly but not exactly correlated: a correlation of 1 - 1e-4 is a genuine 2-D spread
        z = torch.randn(n, 1, generator=g, dtype=F64)
        KDEPrior(torch.cat([z, z + 0.014 * torch.randn(n, 1, generator=g, dtype=F64)], 1).to(dtype))


def test_the_refusal_names_the_subspace():
    z = torch.randn(50, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="1-dimensional subspace of the 2-dimensional latent space"):
        KDEPrior(torch.cat([z, 2 * z], 1))
    with pytest.raises(ValueError, match="dimension 1 is constant"):
        KDEPrior(torch.cat([z, torch.ones_like(z)], 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e20])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_kde_log_prob_at_any_scale_matches_float64(scale, offset, dtype):
    """Codes at scale · (offset + N(0, 1)): once 'singular' at 1e20 (the float32 covariance overflowed).
    The float64 reference is computed on the same (rounded) values; float32 results round at 6e-8 relative."""
    g = torch.Generator().manual_seed(3)
    codes = (scale * (offset + torch.randn(40, 2, generator=g, dtype=F64))).to(dtype)
    z = (scale * (offset + 1.5 * torch.randn(9, 2, generator=g, dtype=F64))).to(dtype)
    kde = KDEPrior(codes)
    got = kde.log_prob(z)
    assert got.dtype == dtype
    ref = reference_kde(codes, z, kde.factor)
    rtol = 1e-6 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(got.to(F64), ref, rtol=rtol, atol=1e-9 * float(ref.abs().max()))
    # the scale only shifts log p by -d·log(scale): the densities of the unit codes
    unit = KDEPrior((codes.to(F64) / scale).to(F64))
    torch.testing.assert_close(got.to(F64), unit.log_prob(z.to(F64) / scale) - 2 * math.log(scale),
                               rtol=rtol, atol=1e-6)


def test_half_precision_codes():
    codes = torch.randn(60, 2, generator=torch.Generator().manual_seed(4)).half()
    kde = KDEPrior(codes)
    z = torch.zeros(3, 2, dtype=torch.float16)
    assert kde.log_prob(z).dtype == torch.float16
    ref = reference_kde(codes, z, kde.factor)
    torch.testing.assert_close(kde.log_prob(z).to(F64), ref, rtol=2e-3, atol=0)  # float16: 11-bit mantissa
    assert kde.sample((4,), generator=torch.Generator().manual_seed(0)).dtype == torch.float16


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_copula_upcasts_half_codes(half):
    codes = torch.randn(300, generator=torch.Generator().manual_seed(5)).to(half)
    prior = GaussianCopulaPrior(codes)
    ref = GaussianCopulaPrior(codes.float())
    assert prior.u_knots.dtype == torch.float32
    assert torch.equal(prior.u_knots, ref.u_knots) and torch.equal(prior.z_knots, ref.z_knots)
    assert bool((prior.u_knots[1:] > prior.u_knots[:-1]).all()), "knots stay distinct"
    assert torch.equal(prior.transform(prior.u_knots), torch.sort(codes.float()).values)
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        GaussianCopulaPrior([0.1, 0.2, 0.3])
