"""Evaluating a user's Pyro model with a recovered prior in place of its site's: against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mapa import KDEPrior
from pyro_mapa.diagnostics import importance_diagnostics
from pyro_mapa.evaluation import (
    PyroModelJoint,
    model_grid_log_likelihood,
    model_importance_log_likelihood,
    with_prior,
)

D, SIGMA = 3, 0.5
F64 = torch.float64


def ppca(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, d, generator=g, dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, SIGMA).to_event(1), obs=x)

    return model, W, mu


def points(n=6, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def ppca_marginal(W, mu, X):
    return dist.MultivariateNormal(mu, W @ W.T + SIGMA**2 * torch.eye(D, dtype=F64)).log_prob(X)


@pytest.mark.parametrize("d", [1, 2])
def test_grid_equals_the_closed_form_marginal(d):
    model, W, mu = ppca(d)
    X = points()
    got = model_grid_log_likelihood(PyroModelJoint(model, "z"), X, -9.0, 9.0, latent_dim=d)
    assert torch.allclose(got, ppca_marginal(W, mu, X), atol=1e-6)


def test_joint_is_the_sum_of_prior_and_likelihood():
    model, W, mu = ppca(2)
    X = points()
    z = torch.randn(4, 6, 2, dtype=F64)
    want = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(z @ W.T + mu, SIGMA).log_prob(X).sum(-1)
    assert torch.allclose(PyroModelJoint(model, "z")(X, z), want, atol=1e-10)


def kde_marginal(W, mu, codes, factor, X):
    """(1/N) sum_i N(x; W z_i + mu, W H W^T + sigma^2 I), H = factor^2 cov(codes)."""
    H = factor**2 * torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    cov = W @ H @ W.T + SIGMA**2 * torch.eye(D, dtype=F64)
    comp = dist.MultivariateNormal(codes @ W.T + mu, cov).log_prob(X.unsqueeze(1))  # (n, N)
    return comp.logsumexp(-1) - math.log(codes.shape[0])


@pytest.mark.parametrize("d", [1, 2])
def test_recovered_prior_replaces_the_site_prior(d):
    model, W, mu = ppca(d)
    X = points()
    codes = torch.randn(40, d, generator=torch.Generator().manual_seed(3), dtype=F64) * 0.7 + 0.3
    prior = KDEPrior(codes, bandwidth=0.5)
    joint = PyroModelJoint(model, "z", prior=prior)
    got = model_grid_log_likelihood(joint, X, -6.0, 6.0, latent_dim=d, num_points=2001 if d == 1 else 401)
    want = kde_marginal(W, mu, codes, 0.5, X)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, ppca_marginal(W, mu, X), atol=1e-2)  # the prior really changed


def test_importance_estimate_agrees_with_the_exact_value_and_k_hat_is_small():
    model, W, mu = ppca(2)
    X = points()
    pyro.set_rng_seed(0)
    est = model_importance_log_likelihood(PyroModelJoint(model, "z"), X, 2, num_samples=1000, fit_steps=300)
    exact = ppca_marginal(W, mu, X)
    assert bool(((est.log_px - exact).abs() < 4 * est.stderr + 1e-3).all())
    diag = importance_diagnostics(est.log_weights)
    assert float(diag.pareto_k.max()) < 0.7


def test_with_prior_only_touches_the_named_site():
    model, W, mu = ppca(1)
    X = points()
    prior = dist.Normal(torch.tensor([2.0], dtype=F64), 0.1).to_event(1)
    tr = poutine.trace(with_prior(model, "z", prior)).get_trace(X)
    assert tr.nodes["z"]["fn"].batch_shape == (6,)
    assert torch.allclose(tr.nodes["z"]["fn"].mean, torch.full((6, 1), 2.0, dtype=F64))
    assert isinstance(tr.nodes["x"]["fn"].base_dist, dist.Normal)


def test_prior_of_another_event_shape_is_refused():
    model, _, _ = ppca(2)
    with pytest.raises(ValueError, match=r"event shape \(1,\) but the model's site 'z' has \(2,\)"):
        PyroModelJoint(model, "z", prior=KDEPrior(torch.randn(30, 1, dtype=F64)))(points(), torch.zeros(1, 6, 2, dtype=F64))


def test_unconditioned_global_latent_is_refused():
    def model(x):
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    X = torch.randn(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="condition it first"):
        PyroModelJoint(model, "z")(X, torch.zeros(2, 4, 1, dtype=F64))
    fixed = poutine.condition(model, data={"s": torch.tensor(0.5, dtype=F64)})
    got = model_grid_log_likelihood(PyroModelJoint(fixed, "z"), X, -9.0, 9.0)
    want = dist.Normal(0.0, math.sqrt(1 + 0.25)).log_prob(X[:, 0])
    assert torch.allclose(got, want, atol=1e-6)


def test_missing_site_and_wrong_plate():
    model, _, _ = ppca(1)
    X = points()
    with pytest.raises(ValueError, match="no sample site named 'u'"):
        PyroModelJoint(model, "u")(X, torch.zeros(1, 6, 1, dtype=F64))
    with pytest.raises(ValueError, match="not inside a vectorized plate named 'batch'"):
        PyroModelJoint(model, "z", plate="batch")(X, torch.zeros(1, 6, 1, dtype=F64))
    with pytest.raises(TypeError, match="prior must be a distribution"):
        PyroModelJoint(model, "z", prior="normal")


def test_kde_prior_is_differentiable_in_z():
    """A proposal is fitted through the prior's log-density: its gradient must be the closed form."""
    codes = torch.randn(30, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    prior = KDEPrior(codes, bandwidth=0.5)
    z = torch.cat([codes[:2], torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=F64)])
    z.requires_grad_()
    (got,) = torch.autograd.grad(prior.log_prob(z).sum(), z)
    H = prior.kernel_cov
    r = dist.MultivariateNormal(codes, H).log_prob(z.detach().unsqueeze(1)).softmax(-1)  # (n, N)
    want = torch.einsum("ni,nid->nd", r, (codes.unsqueeze(0) - z.detach().unsqueeze(1)) @ torch.linalg.inv(H))
    assert torch.allclose(got, want, atol=1e-10)
