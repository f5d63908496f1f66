r"""The LiBI benchmarks' metrics (:mod:`pyro_mapa_experiments.libi_metrics`) against exact answers.

The reference model is linear-Gaussian: :math:`z \sim N(0, I_2)`, :math:`x \mid z \sim N(Wz + b, s^2 I_D)`, so

- :math:`p(x) = N(x; b, W W^\top + s^2 I)`;
- :math:`p(z \mid x) = N(m, \Lambda^{-1})`, :math:`\Lambda = I + W^\top W / s^2`,
  :math:`m = \Lambda^{-1} W^\top (x - b) / s^2`;
- for :math:`q = N(\mu, \mathrm{diag}\,\sigma^2)`,
  :math:`\mathrm{ELBO} = -\tfrac12(\lVert\mu\rVert^2 + \textstyle\sum\sigma^2) - \tfrac d2\log 2\pi
  - \tfrac D2 \log 2\pi s^2
  - \frac{1}{2s^2}\big(\lVert x - W\mu - b\rVert^2 + \mathrm{tr}(W\,\mathrm{diag}\,\sigma^2 W^\top)\big)
  + \textstyle\sum\log\sigma + \tfrac d2 \log 2\pi e`;
- :math:`\mathrm{KL}(q \,\|\, p(z\mid x))
  = \tfrac12\big(\mathrm{tr}(\Lambda\Sigma_q) + (m-\mu)^\top\Lambda(m-\mu) - d
  - \log\det\Lambda - \log\det\Sigma_q\big)`.
"""

import math

import pytest
import torch
from torch import nn

from pyro_mapa import NormalLikelihood
from pyro_mapa_experiments.libi_metrics import (
    aggregate_kl,
    elbo_by_quadrature,
    gauss_hermite_nodes,
    mmd2,
    paper_importance_log_likelihood,
)

F64 = torch.float64
S = 0.5  # observation noise
W_CORRELATED = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -0.2]], dtype=F64)  # D = 3, d = 2
B = torch.tensor([0.2, -0.1, 0.4], dtype=F64)


@pytest.fixture
def float64_default():
    """The metrics hand ``decoder`` points in the default dtype: float64 here, for 1e-8 comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _decoder(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0]).to(F64)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def _data(w: torch.Tensor, b: torch.Tensor, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, w.shape[1], generator=g, dtype=F64)
    return z @ w.T + b + S * torch.randn(n, w.shape[0], generator=g, dtype=F64)


def _log_marginal(w, b, x):
    cov = w @ w.T + S**2 * torch.eye(w.shape[0], dtype=F64)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def _posterior(w, b, x):
    """``(m (n, d), Λ (d, d))`` of the exact posterior."""
    lam = torch.eye(w.shape[1], dtype=F64) + w.T @ w / S**2
    m = torch.linalg.solve(lam, (w.T @ (x - b).T) / S**2).T
    return m, lam


def _elbo_closed_form(w, b, x, mu, sigma):
    d, big_d = w.shape[1], w.shape[0]
    prior = -0.5 * (mu.pow(2).sum(-1) + sigma.pow(2).sum(-1)) - 0.5 * d * math.log(2 * math.pi)
    resid = (x - mu @ w.T - b).pow(2).sum(-1)
    trace = (w.pow(2) * sigma.pow(2).unsqueeze(1)).sum((-1, -2))  # tr(W diag σ² Wᵀ) = Σ_ij W_ij² σ_j²
    lik = -0.5 * big_d * math.log(2 * math.pi * S**2) - (resid + trace) / (2 * S**2)
    entropy = sigma.log().sum(-1) + 0.5 * d * math.log(2 * math.pi * math.e)
    return prior + lik + entropy


def _kl_to_posterior(w, b, x, mu, sigma):
    m, lam = _posterior(w, b, x)
    diff = m - mu
    tr = (torch.diagonal(lam) * sigma.pow(2)).sum(-1)
    quad = torch.einsum("ni,ij,nj->n", diff, lam, diff)
    return 0.5 * (tr + quad - w.shape[1] - torch.logdet(lam) - 2 * sigma.log().sum(-1))


def _some_q(n: int):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 2, generator=g, dtype=F64), 0.2 + torch.rand(n, 2, generator=g, dtype=F64)


def test_elbo_by_quadrature_equals_the_closed_form(float64_default):
    x = _data(W_CORRELATED, B)
    mu, sigma = _some_q(len(x))
    got = elbo_by_quadrature(_decoder(W_CORRELATED, B), NormalLikelihood(S), mu, sigma, x)
    want = _elbo_closed_form(W_CORRELATED, B, x, mu, sigma)
    assert got.shape == (len(x),)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-8)


def test_log_marginal_minus_elbo_is_the_kl_to_the_exact_posterior(float64_default):
    x = _data(W_CORRELATED, B, seed=1)
    mu, sigma = _some_q(len(x))
    dec = _decoder(W_CORRELATED, B)
    elbo = elbo_by_quadrature(dec, NormalLikelihood(S), mu, sigma, x, chunk=4)  # two chunks
    kl = _kl_to_posterior(W_CORRELATED, B, x, mu, sigma)
    assert (kl > 0.05).all()  # q is far from the posterior: the identity is not 0 = 0
    torch.testing.assert_close(_log_marginal(W_CORRELATED, B, x) - elbo, kl, rtol=0, atol=1e-8)
    # q = the exact posterior (orthogonal columns: Λ diagonal, a mean-field q can be exact): ELBO = log p(x)
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=F64)
    m, lam = _posterior(w, B, x)
    scale = torch.diagonal(lam).rsqrt().expand_as(m)
    exact = elbo_by_quadrature(_decoder(w, B), NormalLikelihood(S), m, scale, x)
    torch.testing.assert_close(exact, _log_marginal(w, B, x), rtol=0, atol=1e-8)


def test_paper_is_is_exact_when_the_doubled_proposal_is_the_posterior(float64_default):
    """``q̃ = N(loc, 2 scale²)``: with ``scale² = Σ_post / 2`` every weight is ``p(x)``: no error, se = 0."""
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=F64)  # WᵀW diagonal: diagonal posterior
    x = _data(w, B, n=5, seed=2)
    m, lam = _posterior(w, B, x)
    scale = (torch.diagonal(lam).reciprocal() / 2).sqrt().expand_as(m)
    est, se = paper_importance_log_likelihood(_decoder(w, B), NormalLikelihood(S), m, scale, x,
                                              num_samples=200, seed=3, chunk=2)
    torch.testing.assert_close(est, _log_marginal(w, B, x), rtol=0, atol=1e-9)
    assert se.shape == (5,) and (se < 1e-9).all()


def test_paper_is_converges_to_log_marginal_with_honest_standard_errors(float64_default):
    x = _data(W_CORRELATED, B, n=5, seed=4)
    m, lam = _posterior(W_CORRELATED, B, x)
    scale = torch.diagonal(torch.linalg.inv(lam)).sqrt().expand_as(m)  # the posterior's marginal scales
    dec, lik, exact = _decoder(W_CORRELATED, B), NormalLikelihood(S), _log_marginal(W_CORRELATED, B, x)
    est, se = paper_importance_log_likelihood(dec, lik, m, scale, x, num_samples=20000, seed=0)
    assert (se > 0).all() and (se < 0.02).all()
    assert ((est - exact).abs() < 4 * se).all()
    # the reported standard error against the spread over seeds (one point, 40 seeds of 200 samples)
    runs = [paper_importance_log_likelihood(dec, lik, m[:1], scale[:1], x[:1], num_samples=200, seed=k)
            for k in range(40)]
    ests = torch.cat([r[0] for r in runs])
    ses = torch.cat([r[1] for r in runs])
    ratio = float(ests.std() / ses.mean())
    assert 0.6 < ratio < 1.6, ratio
    assert abs(float(ests.mean() - exact[0])) < 4 * float(ses.mean()) / math.sqrt(40) + 1e-3


def test_paper_is_seed_and_chunking(float64_default):
    """Same seed, same numbers; another seed, other numbers."""
    x = _data(W_CORRELATED, B, n=4, seed=5)
    m, lam = _posterior(W_CORRELATED, B, x)
    scale = torch.diagonal(torch.linalg.inv(lam)).sqrt().expand_as(m)
    dec, lik = _decoder(W_CORRELATED, B), NormalLikelihood(S)
    a = paper_importance_log_likelihood(dec, lik, m, scale, x, num_samples=300, seed=1)
    b = paper_importance_log_likelihood(dec, lik, m, scale, x, num_samples=300, seed=1)
    c = paper_importance_log_likelihood(dec, lik, m, scale, x, num_samples=300, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def _kl_std_normal(mu, s):
    return 0.5 * float((s**2 + mu**2 - 1 - 2 * s.log()).sum())


def test_aggregate_kl_of_one_component_is_the_gaussian_kl():
    mu, s = torch.tensor([[0.7, -1.2]], dtype=F64), torch.tensor([[0.3, 1.8]], dtype=F64)
    assert aggregate_kl(mu, s) == pytest.approx(_kl_std_normal(mu, s), abs=1e-10)
    # many identical components: q_agg is that one Gaussian
    many = aggregate_kl(mu.expand(30, 2), s.expand(30, 2), chunk=7)
    assert many == pytest.approx(_kl_std_normal(mu, s), abs=1e-10)
    # the standard normal itself: 0
    standard = aggregate_kl(torch.zeros(3, 2, dtype=F64), torch.ones(3, 2, dtype=F64))
    assert standard == pytest.approx(0.0, abs=1e-12)


def test_aggregate_kl_of_two_separated_components_against_monte_carlo():
    mu = torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=F64)
    s = torch.tensor([[0.5, 0.8], [1.0, 0.3]], dtype=F64)
    got = aggregate_kl(mu, s, chunk=1)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    comp = torch.randint(0, 2, (n,), generator=g)
    z = mu[comp] + s[comp] * torch.randn(n, 2, generator=g, dtype=F64)
    log_comp = torch.distributions.Normal(mu, s).log_prob(z.unsqueeze(1)).sum(-1)  # (n, 2)
    log_q = log_comp.logsumexp(-1) - math.log(2)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    f = log_q - log_p
    mc, mc_se = float(f.mean()), float(f.std() / math.sqrt(n))
    assert abs(got - mc) < 4 * mc_se, (got, mc, mc_se)
    # separated: log q_agg = log q_k - log 2 near component k, so KL = mean of the KLs - log 2
    separated = 0.5 * (_kl_std_normal(mu[:1], s[:1]) + _kl_std_normal(mu[1:], s[1:])) - math.log(2)
    assert got == pytest.approx(separated, abs=1e-6)


def _mmd2_loop(a, b):
    """The unbiased MMD² by explicit double loops; h² = the median squared pairwise distance (pooled)."""
    pooled = [row for row in a.tolist()] + [row for row in b.tolist()]

    def d2(u, v):
        return sum((ui - vi) ** 2 for ui, vi in zip(u, v))

    pairs = sorted(d2(pooled[i], pooled[j]) for i in range(len(pooled)) for j in range(i + 1, len(pooled)))
    assert len(pairs) % 2 == 1  # an odd count: the median is one pair, no convention needed
    h2 = pairs[len(pairs) // 2]

    def k(u, v):
        return math.exp(-d2(u, v) / (2 * h2))

    n, m = len(a), len(b)
    al, bl = a.tolist(), b.tolist()
    xx = sum(k(al[i], al[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(bl[i], bl[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(al[i], bl[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("n, m, shift", [(4, 6, 0.0), (5, 6, 1.5), (7, 3, 0.5)])
def test_mmd2_equals_the_direct_unbiased_estimator(n, m, shift):
    g = torch.Generator().manual_seed(n * 10 + m)
    a = torch.randn(n, 2, generator=g, dtype=F64)
    b = torch.randn(m, 2, generator=g, dtype=F64) * 1.3 + shift
    assert mmd2(a, b) == pytest.approx(_mmd2_loop(a, b), abs=1e-12)
    # float input (computed in float64 inside)
    assert mmd2(a.float(), b.float()) == pytest.approx(_mmd2_loop(a, b), abs=1e-5)


def test_mmd2_separates_shifted_samples_from_equal_ones():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
    same = mmd2(a, b)
    shifted = mmd2(a, b + torch.tensor([1.0, 0.0]))
    assert abs(same) < 0.01
    assert shifted > 0.1


@pytest.mark.parametrize("d", [1, 2])
def test_gauss_hermite_nodes_integrate_polynomials_exactly(d):
    t, logw = gauss_hermite_nodes(5, d)
    w = logw.exp()
    assert t.shape == (5**d, d) and logw.shape == (5**d,) and t.dtype == F64
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    z1 = t[:, 0]
    assert float((w * z1).sum()) == pytest.approx(0.0, abs=1e-14)
    assert float((w * z1**2).sum()) == pytest.approx(1.0, abs=1e-13)
    assert float((w * z1**4).sum()) == pytest.approx(3.0, abs=1e-12)
    assert float((w * z1**6).sum()) == pytest.approx(15.0, abs=1e-11)
    if d == 2:
        z2 = t[:, 1]
        assert float((w * z1**2 * z2**2).sum()) == pytest.approx(1.0, abs=1e-12)
        assert float((w * z1 * z2).sum()) == pytest.approx(0.0, abs=1e-14)
        assert float((w * z2**4).sum()) == pytest.approx(3.0, abs=1e-12)


def test_mmd2_refuses_samples_it_cannot_compare():
    good = torch.zeros(5, 2)
    for a, b in ((torch.zeros(1, 2), good), (good, torch.zeros(5, 3)), (torch.zeros(5), good)):
        with pytest.raises(ValueError, match="mmd2 needs two samples"):
            mmd2(a, b)
    bad = good.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        mmd2(good, bad)
