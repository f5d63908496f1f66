"""Exact evaluators against closed forms and brute force."""

import math

import pytest
import torch
from torch import nn

from pyro_mapa import AmortizedCodebook, BernoulliLikelihood, NormalLikelihood, mlp
from pyro_mapa.evaluation import empirical_log_likelihood, gauss_legendre_grid, quadrature_log_likelihood


def mvn_log_prob(x, mean, cov):
    """Closed-form multivariate normal log-density, float64."""
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


LINEAR_CASES = [
    # (a, b, sigma)
    ((1.0, -0.5), (0.2, 0.3), 0.3),
    ((0.7, 1.3), (-1.0, 0.5), 0.05),
    ((-2.0, 0.1), (0.0, 0.0), 0.5),
]


@pytest.mark.parametrize("a,b,sigma", LINEAR_CASES)
def test_quadrature_linear_gaussian_closed_form(a, b, sigma):
    a = torch.tensor(a, dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    cov = torch.outer(a, a) + sigma**2 * torch.eye(2, dtype=torch.float64)
    # Points drawn from the marginal itself, plus its mean and a point a little off the line.
    g = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(cov)
    x = b + torch.randn(40, 2, generator=g, dtype=torch.float64) @ chol.T
    x = torch.cat([x, b.unsqueeze(0), (b + 1.5 * a + 2 * sigma * torch.tensor([a[1], -a[0]]) / a.norm()).unsqueeze(0)])

    calls = []

    def decode(u):
        calls.append(u.shape)
        return a * u + b  # (G, 1) -> (G, 2)

    got = quadrature_log_likelihood(x, decode, NormalLikelihood(sigma))
    assert got.shape == (42,)
    assert got.dtype == torch.float64
    assert calls == [(2001, 1)], "decode runs once, on the (G, 1) grid"
    ref = mvn_log_prob(x, b, cov)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # One query point alone (the block size comes from the first row's size).
    torch.testing.assert_close(quadrature_log_likelihood(x[-1:], decode, NormalLikelihood(sigma)), ref[-1:],
                               rtol=0, atol=1e-6)


def test_quadrature_chunking_and_dtype():
    a = torch.tensor([0.8, -0.6], dtype=torch.float64)
    b = torch.tensor([0.1, 0.2], dtype=torch.float64)
    x = torch.randn(23, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lik = NormalLikelihood(0.4)
    full = quadrature_log_likelihood(x, lambda u: a * u + b, lik)
    chunked = quadrature_log_likelihood(x, lambda u: a * u + b, lik, chunk_size=5)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    # float32 input: float32 output, close to the float64 answer.
    f32 = quadrature_log_likelihood(x.float(), lambda u: a.float() * u + b.float(), lik)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), full, rtol=0, atol=1e-4)


def test_quadrature_constant_decoder_with_bernoulli_likelihood():
    # If the decoder ignores u, the integral is just the likelihood.
    logits = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    got = quadrature_log_likelihood(x, lambda u: logits.expand(u.shape[0], 3), BernoulliLikelihood())
    p = torch.sigmoid(logits)
    ref = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_quadrature_does_not_track_gradients_of_the_decoder():
    lin = nn.Linear(1, 2).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    out = quadrature_log_likelihood(x, lin, NormalLikelihood(0.5))
    assert not out.requires_grad


def test_gauss_legendre_grid_integrates_normal_moments():
    u, log_w = gauss_legendre_grid()
    assert u.shape == log_w.shape == (2001,)
    assert u.dtype == torch.float64
    assert float(u[0]) == -8.0 and float(u[-1]) == 8.0
    w = log_w.exp()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)  # ∫ N(u; 0, 1) du
    assert float((w * u).sum()) == pytest.approx(0.0, abs=1e-12)
    assert float((w * u**2).sum()) == pytest.approx(1.0, abs=1e-12)  # ∫ u² N(u; 0, 1) du
    assert float((w * u**4).sum()) == pytest.approx(3.0, abs=1e-10)
    # E[cos u] = exp(-1/2).
    assert float((w * torch.cos(u)).sum()) == pytest.approx(math.exp(-0.5), abs=1e-12)


def test_gauss_legendre_grid_custom_range_and_trapezoid_weights():
    u, log_w = gauss_legendre_grid(num_points=11, low=-1.0, high=1.0)
    torch.testing.assert_close(u, torch.linspace(-1, 1, 11, dtype=torch.float64))
    phi = torch.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)
    w = torch.full((11,), 0.2, dtype=torch.float64)
    w[0] = w[-1] = 0.1
    torch.testing.assert_close(log_w, (w * phi).log())
    # A fine grid on [-1, 1] integrates the normal density to 2 Phi(1) - 1.
    u, log_w = gauss_legendre_grid(num_points=4001, low=-1.0, high=1.0)
    assert float(log_w.exp().sum()) == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-7)


def make_codebook(n=9, d_obs=2, seed=0):
    torch.manual_seed(seed)
    data = torch.randn(n, d_obs, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    return AmortizedCodebook(mlp(d_obs, 1, (6,)).double(), mlp(1, d_obs, (6,)).double(), data)


def brute_empirical(codebook, sigma, x):
    """Double loop: log (1/N) sum_i prod_d N(x_nd; f(g(x_i))_d, sigma^2)."""
    n_codes = codebook.num_codes
    means = [codebook.decoder(codebook.encoder(codebook.data[i].unsqueeze(0)))[0].detach() for i in range(n_codes)]
    out = []
    for xn in x:
        terms = []
        for i in range(n_codes):
            lp = 0.0
            for d in range(x.shape[1]):
                r = float(xn[d] - means[i][d])
                lp += -0.5 * r * r / sigma**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            terms.append(lp)
        m = max(terms)
        out.append(m + math.log(sum(math.exp(t - m) for t in terms)) - math.log(n_codes))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("chunk_size", [256, 1, 4])
def test_empirical_log_likelihood_equals_double_loop(chunk_size):
    cb = make_codebook()
    sigma = 0.4
    got = empirical_log_likelihood(cb, NormalLikelihood(sigma), chunk_size=chunk_size)
    assert got.shape == (9,)
    torch.testing.assert_close(got.detach(), brute_empirical(cb, sigma, cb.data), rtol=0, atol=1e-10)


def test_empirical_log_likelihood_on_query_points():
    cb = make_codebook()
    sigma = 0.25
    xq = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = empirical_log_likelihood(cb, NormalLikelihood(sigma), xq, chunk_size=4)
    assert got.shape == (6,)
    torch.testing.assert_close(got.detach(), brute_empirical(cb, sigma, xq), rtol=0, atol=1e-10)
    one = empirical_log_likelihood(cb, NormalLikelihood(sigma), xq[2:3])
    torch.testing.assert_close(one.detach(), brute_empirical(cb, sigma, xq[2:3]), rtol=0, atol=1e-10)


def test_empirical_log_likelihood_is_differentiable():
    cb = make_codebook()
    lik = NormalLikelihood(0.4)
    total = empirical_log_likelihood(cb, lik).sum()
    total.backward()
    for p in cb.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    # Finite-difference check of one decoder bias coordinate.
    bias = cb.decoder[-1].bias
    eps = 1e-6
    with torch.no_grad():
        bias[0] += eps
        up = float(empirical_log_likelihood(cb, lik).sum())
        bias[0] -= 2 * eps
        down = float(empirical_log_likelihood(cb, lik).sum())
        bias[0] += eps
    assert float(bias.grad[0]) == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-8)


def test_empirical_log_likelihood_single_code_is_plain_gaussian():
    # N = 1: log p(x) = log N(x; f(g(x_1)), sigma^2 I).
    cb = make_codebook(n=1)
    sigma = 0.7
    xq = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = cb.decoder(cb.encoder(cb.data))[0].detach()
    ref = torch.distributions.Normal(mean, sigma).log_prob(xq).sum(-1)
    torch.testing.assert_close(empirical_log_likelihood(cb, NormalLikelihood(sigma), xq).detach(), ref)


def test_grid_log_likelihood_2d_linear_gaussian_closed_form():
    """d = 2: z ~ N(0, I), x = A z + b + σ ε has the marginal N(b, A Aᵀ + σ² I)."""
    import math as _m

    from pyro_mapa.evaluation import grid_log_likelihood
    from pyro_mapa.models.likelihoods import NormalLikelihood

    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    sigma = 0.7
    x = torch.randn(20, 3, generator=g, dtype=torch.float64) * 2
    exact = torch.distributions.MultivariateNormal(b, a @ a.T + sigma**2 * torch.eye(3, dtype=torch.float64)).log_prob(x)
    log_prior = lambda z: (-0.5 * z**2 - 0.5 * _m.log(2 * _m.pi)).sum(-1)  # noqa: E731
    got = grid_log_likelihood(x, lambda z: z @ a.T + b, log_prior, NormalLikelihood(sigma), [-8, -8], [8, 8], 301)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="dimension 1 or 2"):
        grid_log_likelihood(x, lambda z: z, log_prior, NormalLikelihood(sigma), [-1] * 3, [1] * 3)


@pytest.mark.parametrize("d", [1, 2])
def test_grid_log_likelihood_trapezoid_endpoints_with_a_uniform_prior(d):
    """A uniform prior on a box puts mass at the grid's ends, so the trapezoid's half end weights matter.

    x ~ N(z, 0.3² I), z ~ U(box) with box [0, 1] × [-0.5, 1.5] (the first d sides):
    p(x) = prod_k [Φ((hi_k - x_k)/σ) - Φ((lo_k - x_k)/σ)] / (hi_k - lo_k) in closed form.
    """
    from pyro_mapa.evaluation import grid_log_likelihood

    sigma = 0.3
    low, high = torch.tensor([0.0, -0.5], dtype=torch.float64)[:d], torch.tensor([1.0, 1.5], dtype=torch.float64)[:d]
    x = torch.tensor([[0.1, 0.5], [0.9, -0.2], [0.5, 1.3]], dtype=torch.float64)[:, :d]
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    exact = ((normal.cdf((high - x) / sigma) - normal.cdf((low - x) / sigma)) / (high - low)).log().sum(-1)
    log_area = float((high - low).log().sum())
    got = grid_log_likelihood(x, lambda z: z, lambda z: torch.full((len(z),), -log_area, dtype=z.dtype),
                              NormalLikelihood(sigma), low.tolist(), high.tolist(), num_points=401)
    torch.testing.assert_close(got, exact, rtol=0, atol=2e-5)
    one = grid_log_likelihood(x[1:2], lambda z: z, lambda z: torch.full((len(z),), -log_area, dtype=z.dtype),
                              NormalLikelihood(sigma), low.tolist(), high.tolist(), num_points=401)
    torch.testing.assert_close(one, exact[1:2], rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="need high > low on every dimension, got 1.0 and 1.0"):
        grid_log_likelihood(x, lambda z: z, lambda z: z[:, 0] * 0, NormalLikelihood(sigma), [1.0] * d, [1.0] * d)
