"""Exact latent posteriors on a grid against the linear-Gaussian model's closed forms.

Model: z ~ N(0, I_d), x = W z + b + σ ε. Then p(x) = N(b, W Wᵀ + σ² I), and
p(z | x) = N(m, S) with S = (I + Wᵀ W / σ²)⁻¹ and m = S Wᵀ (x - b) / σ².
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_mapa import NormalLikelihood, mlp, quadrature_log_likelihood
from pyro_mapa.evaluation import grid_log_likelihood
from pyro_mapa.evaluation.latent_posterior import (
    LatentGrid,
    exact_posterior,
    grid_log_marginal,
    importance_log_marginal,
    kl_to_posterior,
    latent_grid,
)

SIGMA = 0.4
F64 = torch.float64


def linear_gaussian(d, data_dim=2, n=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, d, generator=g, dtype=F64)
    b = torch.randn(data_dim, generator=g, dtype=F64)
    z = torch.randn(n, d, generator=g, dtype=F64)
    x = z @ w.T + b + SIGMA * torch.randn(n, data_dim, generator=g, dtype=F64)
    return w, b, x


def closed_marginal(x, w, b):
    cov = w @ w.T + SIGMA**2 * torch.eye(len(b), dtype=F64)
    return MultivariateNormal(b, cov).log_prob(x)


def closed_posterior(x, w, b):
    d = w.shape[1]
    cov = torch.linalg.inv(torch.eye(d, dtype=F64) + w.T @ w / SIGMA**2)
    mean = (x - b) @ w @ cov / SIGMA**2  # cov is symmetric
    return mean, cov


def decoder_of(w, b):
    return lambda z: z @ w.T + b


LIK = NormalLikelihood(SIGMA)


@pytest.mark.parametrize("d", [1, 2])
def test_log_marginal_equals_closed_form_and_the_no_grad_evaluators(d):
    w, b, x = linear_gaussian(d)
    ll = grid_log_marginal(x, decoder_of(w, b), LIK, latent_dim=d)
    exact = closed_marginal(x, w, b)
    assert torch.allclose(ll, exact, atol=1e-10, rtol=0)
    if d == 1:
        reference = quadrature_log_likelihood(x, decoder_of(w, b), LIK)
    else:
        std_normal = lambda z: Normal(0.0, 1.0).log_prob(z).sum(-1)
        reference = grid_log_likelihood(x, decoder_of(w, b), std_normal, LIK, [-7.0, -7.0], [7.0, 7.0], 301)
    assert torch.allclose(ll, reference, atol=1e-12, rtol=0)


def test_log_marginal_equals_quadrature_for_a_network_decoder():
    torch.manual_seed(0)
    net = mlp(1, 3, (16,)).double()
    x = net(torch.randn(30, 1, dtype=F64)).detach() + 0.1 * torch.randn(30, 3, dtype=F64)
    lik = NormalLikelihood(0.1)
    ll = grid_log_marginal(x, net, lik, latent_dim=1)
    assert ll.requires_grad
    assert torch.allclose(ll, quadrature_log_likelihood(x, net, lik), atol=1e-11, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_log_marginal_gradient_equals_closed_form_gradient(d):
    w0, b, x = linear_gaussian(d)
    w_grid = w0.clone().requires_grad_(True)
    grid_log_marginal(x, decoder_of(w_grid, b), LIK, latent_dim=d).sum().backward()
    w_exact = w0.clone().requires_grad_(True)
    closed_marginal(x, w_exact, b).sum().backward()
    assert torch.allclose(w_grid.grad, w_exact.grad, atol=1e-9, rtol=0)
    assert w_exact.grad.abs().max() > 1e-2  # a gradient that could be wrong


@pytest.mark.parametrize("d", [1, 2])
def test_grid_posterior_moments_and_kl_to_prior_equal_closed_form(d):
    w, b, x = linear_gaussian(d)
    post = exact_posterior(x, decoder_of(w, b), LIK, latent_dim=d)
    mean, cov = closed_posterior(x, w, b)
    tol = 1e-10 if d == 1 else 1e-8  # rounding over 301² nodes
    assert torch.allclose(post.mean(), mean, atol=tol, rtol=0)
    assert torch.allclose(post.covariance(), cov.expand(len(x), d, d), atol=tol, rtol=0)
    assert torch.allclose(post.log_weights().exp().sum(-1), torch.ones(len(x), dtype=F64), atol=1e-12)
    exact_kl = 0.5 * (cov.trace() + (mean**2).sum(-1) - d - torch.logdet(cov))
    assert torch.allclose(post.kl_to_prior(), exact_kl, atol=tol, rtol=0)
    # the density at the nodes is the closed-form posterior's
    exact_density = MultivariateNormal(mean.unsqueeze(1), cov).log_prob(post.grid.z)  # (n, G)
    near = exact_density > -20
    assert torch.allclose(post.log_density()[near], exact_density[near], atol=10 * tol, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_kl_of_a_gaussian_guide_to_the_posterior_equals_closed_form(d):
    w, b, x = linear_gaussian(d)
    grid = latent_grid(d) if d == 1 else latent_grid(2, 401, -10.0, 10.0)  # the posterior ridge reaches ±7
    post = exact_posterior(x, decoder_of(w, b), LIK, grid)
    mean, cov = closed_posterior(x, w, b)
    g = torch.Generator().manual_seed(1)
    loc = mean + 0.3 * torch.randn(mean.shape, generator=g, dtype=F64).sign()
    scale = cov.diagonal().sqrt() * (0.6 + 0.8 * torch.rand(mean.shape, generator=g, dtype=F64))
    q = torch.distributions.Independent(Normal(loc, scale), 1)
    exact = kl_divergence(MultivariateNormal(loc, torch.diag_embed(scale**2)), MultivariateNormal(mean, cov))
    kl = kl_to_posterior(q, post)
    assert exact.min() > 0.05
    assert torch.allclose(kl, exact, atol=1e-10, rtol=0)
    exact_q = torch.distributions.Independent(Normal(mean, cov.diagonal().sqrt().expand_as(mean)), 1)
    if d == 1:  # q equal to the posterior: zero
        assert kl_to_posterior(exact_q, post).abs().max() < 1e-10


def test_guide_narrower_than_the_grid_spacing_is_refused():
    w, b, x = linear_gaussian(1)
    post = exact_posterior(x, decoder_of(w, b), LIK, latent_grid(1, 101))  # spacing 0.16
    narrow = torch.distributions.Independent(Normal(torch.zeros(len(x), 1, dtype=F64), 0.02), 1)
    with pytest.raises(ValueError, match="grid mass"):
        kl_to_posterior(narrow, post)
    with pytest.raises(ValueError, match="covers 3 points"):
        kl_to_posterior(torch.distributions.Independent(Normal(torch.zeros(3, 1, dtype=F64), 1.0), 1), post)
    with pytest.raises(ValueError, match="event shape"):
        kl_to_posterior(Normal(torch.zeros(len(x), 1, dtype=F64), 1.0), post)


def test_latent_grid_with_a_custom_prior_matches_grid_log_likelihood():
    w, b, x = linear_gaussian(1)
    prior = Normal(torch.tensor(0.5, dtype=F64), torch.tensor(1.5, dtype=F64))
    log_prior = lambda z: prior.log_prob(z).sum(-1)
    grid = latent_grid(1, 1201, -10.0, 11.0, log_prior=log_prior)
    ll = grid_log_marginal(x, decoder_of(w, b), LIK, grid)
    assert torch.allclose(ll, grid_log_likelihood(x, decoder_of(w, b), log_prior, LIK, [-10.0], [11.0], 1201),
                          atol=1e-12, rtol=0)
    # z = 0.5 + 1.5 u with u ~ N(0, 1): x = 1.5 w u + (b + 0.5 w) + noise
    assert torch.allclose(ll, closed_marginal(x, 1.5 * w, b + 0.5 * w[:, 0]), atol=1e-10, rtol=0)


def test_latent_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="importance_log_marginal"):
        latent_grid(3)
    with pytest.raises(ValueError, match="high > low"):
        latent_grid(1, 11, 1.0, -1.0)
    with pytest.raises(ValueError, match="2 entries"):
        latent_grid(2, 11, [-1.0], [1.0])
    with pytest.raises(TypeError, match="LatentGrid"):
        grid_log_marginal(torch.zeros(2, 2), lambda z: z, LIK, grid=(1, 2, 3))


class WideGaussianProposal:
    """A fixed proposal N(0, 1.5² I) that ignores x (the Proposal protocol)."""

    scale = 1.5

    def sample(self, x, num_samples, generator=None):
        return self.scale * torch.randn(num_samples, len(x), 3, generator=generator, dtype=x.dtype)

    def log_prob(self, z, x):
        return Normal(0.0, self.scale).log_prob(z).sum(-1)


@pytest.mark.parametrize("proposal", [None, WideGaussianProposal()])
def test_importance_log_marginal_is_consistent_with_the_closed_form(proposal):
    g = torch.Generator().manual_seed(0)
    w = 0.5 * torch.randn(4, 3, generator=g, dtype=F64)
    b = torch.zeros(4, dtype=F64)
    x = torch.randn(6, 3, generator=g, dtype=F64) @ w.T + torch.randn(6, 4, generator=g, dtype=F64)
    lik = NormalLikelihood(1.0)
    wg = w.clone().requires_grad_(True)
    est = importance_log_marginal(x, decoder_of(wg, b), lik, 3, 20000, proposal=proposal, generator=g)
    exact = MultivariateNormal(b, w @ w.T + torch.eye(4, dtype=F64)).log_prob(x)
    assert est.stderr.max() < 0.02
    assert ((est.log_px.detach() - exact).abs() < 4 * est.stderr + 1e-12).all()
    # the gradient (self-normalized Fisher identity) approaches the closed form's
    est.log_px.sum().backward()
    we = w.clone().requires_grad_(True)
    MultivariateNormal(b, we @ we.T + torch.eye(4, dtype=F64)).log_prob(x).sum().backward()
    assert (wg.grad - we.grad).abs().max() < 0.05 * we.grad.abs().max()
    assert est.log_weights.shape == (6, 20000) and not est.log_weights.requires_grad


def test_importance_log_marginal_checks_its_arguments():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="num_samples"):
        importance_log_marginal(x, lambda z: z, LIK, 2, 1)
    with pytest.raises(ValueError, match="expected"):
        importance_log_marginal(x, lambda z: z, LIK, 2, 10, proposal=WideGaussianProposal())


def test_grid_named_tuple_round_trip():
    grid = latent_grid(2, 5)
    assert isinstance(grid, LatentGrid) and grid.z.shape == (25, 2)
    assert math.isclose(float(grid.log_cell.exp().sum()), 14.0**2, rel_tol=1e-12)
    assert grid.to(torch.zeros(1, dtype=torch.float32)).z.dtype == torch.float32
