"""Importance-sampling evaluation for any latent dimension, against closed forms and quadrature."""

import math

import pytest
import torch

from pyro_mapa import NormalLikelihood
from pyro_mapa.evaluation import (
    ImportanceEstimate,
    MixtureProposal,
    fit_proposal,
    importance_log_likelihood,
    quadrature_log_likelihood,
    stratified_iwae_bound,
)

F64 = torch.float64
D_LAT, D_OBS = 3, 5


def std_normal_log_prior(z):
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class LinearGaussian:
    """z ~ N(0, I_3), x = A z + b + sigma eps in R^5, with A^T A = diag(scales^2).

    Orthogonal columns make the exact posterior a diagonal Gaussian, which the
    diagonal mixture proposal can represent exactly.
    """

    def __init__(self, sigma, scales=(2.0, 1.0, 0.5), seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D_OBS, D_LAT, generator=g, dtype=F64))
        self.A = q * torch.tensor(scales, dtype=F64)
        self.b = torch.randn(D_OBS, generator=g, dtype=F64)
        self.sigma = sigma
        self.likelihood = NormalLikelihood(sigma)
        self.cov = self.A @ self.A.T + sigma**2 * torch.eye(D_OBS, dtype=F64)
        self.marginal = torch.distributions.MultivariateNormal(self.b, covariance_matrix=self.cov)
        # Exact posterior: N(P A^T (x - b) / sigma^2, P), P = (I + A^T A / sigma^2)^{-1}, diagonal here.
        self.post_cov = torch.linalg.inv(torch.eye(D_LAT, dtype=F64) + self.A.T @ self.A / sigma**2)
        self.gain = self.post_cov @ self.A.T / sigma**2  # (d, D)

    def decode(self, z):
        return z @ self.A.T + self.b

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        return self.b + torch.randn(n, D_OBS, generator=g, dtype=F64) @ torch.linalg.cholesky(self.cov).T

    def exact_proposal(self, num_components=2):
        """An affine MixtureProposal whose every component is the exact posterior."""
        k, d = num_components, D_LAT
        q = MixtureProposal(D_OBS, D_LAT, k, hidden=()).double()
        lin = q.net[-1]
        post_sd = self.post_cov.diagonal().sqrt()
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
            lin.bias[:k] = torch.linspace(-1.0, 1.0, k, dtype=F64)  # unequal mixture weights
            for j in range(k):
                rows = slice(k + j * d, k + (j + 1) * d)
                lin.weight[rows] = self.gain
                lin.bias[rows] = -self.gain @ self.b
                lin.bias[k + k * d + j * d : k + k * d + (j + 1) * d] = torch.log(torch.expm1(post_sd - 1e-6))
        return q


class FixedGaussian:
    """A proposal that ignores x: N(loc, scale^2 I)."""

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale
        self.calls = 0

    def sample(self, x, num_samples, generator=None):
        self.calls += 1
        eps = torch.randn(num_samples, x.shape[0], D_LAT, generator=generator, dtype=x.dtype)
        return self.loc + self.scale * eps

    def log_prob(self, z, x):
        return torch.distributions.Normal(self.loc, self.scale).log_prob(z).sum(-1)


@pytest.fixture(scope="module")
def narrow():
    return LinearGaussian(sigma=0.3)


@pytest.fixture(scope="module")
def fitted(narrow):
    x = narrow.data(40)
    q = fit_proposal(
        x, narrow.decode, std_normal_log_prior, narrow.likelihood, D_LAT,
        num_components=3, num_per_component=1, steps=600, batch_size=None, lr=1e-2, hidden=(32,), seed=0,
    )
    return x, q


def test_exact_posterior_proposal_gives_the_closed_form_with_zero_error(narrow):
    x = narrow.data(25)
    q = narrow.exact_proposal(num_components=2)
    est = importance_log_likelihood(
        x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 64,
        generator=torch.Generator().manual_seed(0),
    )
    assert isinstance(est, ImportanceEstimate)
    assert est.log_px.shape == est.stderr.shape == (25,)
    assert est.log_weights.shape == (25, 64)
    truth = narrow.marginal.log_prob(x)
    # Every weight equals p(x): constant log-weights, exact estimate, zero error.
    torch.testing.assert_close(est.log_weights, truth.unsqueeze(1).expand(25, 64), rtol=0, atol=1e-9)
    torch.testing.assert_close(est.log_px, truth, rtol=0, atol=1e-9)
    assert float(est.stderr.max()) < 1e-6
    torch.testing.assert_close(est.ess, torch.full((25,), 64.0, dtype=F64), rtol=1e-9, atol=0)
    # The stratified bound is exact too, and differentiable in the proposal.
    bound = stratified_iwae_bound(x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 3)
    torch.testing.assert_close(bound.detach(), truth, rtol=0, atol=1e-9)
    assert bound.requires_grad


def test_stderr_and_log_px_match_their_formulas_on_given_weights(narrow):
    # Check the log-space formulas against the plain ones on the weights themselves.
    x = narrow.data(6)
    q = FixedGaussian(torch.tensor(0.0, dtype=F64), 1.0)
    est = importance_log_likelihood(x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 200,
                                    generator=torch.Generator().manual_seed(3))
    lw = est.log_weights
    shift = lw.max(-1, keepdim=True).values
    w = (lw - shift).exp()
    torch.testing.assert_close(est.log_px, w.mean(-1).log() + shift.squeeze(1), rtol=0, atol=1e-10)
    se = w.std(-1) / (math.sqrt(200) * w.mean(-1))  # delta method, sd with S - 1
    torch.testing.assert_close(est.stderr, se, rtol=1e-8, atol=0)
    torch.testing.assert_close(est.ess, w.sum(-1) ** 2 / (w**2).sum(-1), rtol=1e-10, atol=0)
    # The weights are what the model says: log p(x|z) + log p(z) - log q(z) at the draws.
    z = q.loc + q.scale * torch.randn(200, 6, D_LAT, generator=torch.Generator().manual_seed(3), dtype=F64)
    ref = (
        narrow.likelihood(narrow.decode(z)).log_prob(x) + std_normal_log_prior(z) - q.log_prob(z, x)
    ).T
    torch.testing.assert_close(lw, ref, rtol=0, atol=1e-10)


def test_fitted_proposal_matches_the_closed_form_within_its_error(narrow, fitted):
    x, q = fitted
    assert q.history[-1] > q.history[0] + 5, "the IWAE bound improved"
    est = importance_log_likelihood(
        x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 2000,
        generator=torch.Generator().manual_seed(1),
    )
    truth = narrow.marginal.log_prob(x)
    err = est.log_px - truth
    assert bool((err.abs() <= 4 * est.stderr + 0.01).all()), (err.abs() / est.stderr).max()
    # A good proposal: the error bars are small, and so is the spread of the errors.
    assert float(est.stderr.max()) < 0.05
    assert float(est.stderr.mean()) < 0.02
    assert float(err.abs().mean()) < 0.02
    # Its training bound (K = 3 stratified draws) is below log p(x) on average (Jensen), not far below.
    reps = 100
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        gaps = torch.stack([
            stratified_iwae_bound(x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 1, gen)
            - truth
            for _ in range(reps)
        ])
    sem = float(gaps.std()) / math.sqrt(gaps.numel())
    assert float(gaps.mean()) + 4 * sem < 0
    assert float(gaps.mean()) > -0.3


def test_fitted_proposal_beats_the_prior_as_proposal(narrow, fitted):
    # The IS error bar with the fitted proposal is far below that with q = p(z).
    x, q = fitted
    gen = torch.Generator().manual_seed(4)
    fit_se = importance_log_likelihood(x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 500,
                                       generator=gen).stderr
    prior_q = FixedGaussian(torch.tensor(0.0, dtype=F64), 1.0)
    prior_se = importance_log_likelihood(
        x, narrow.decode, std_normal_log_prior, narrow.likelihood, prior_q, 500, generator=gen
    ).stderr
    assert float(prior_se.median()) > 10 * float(fit_se.median())


def test_poor_proposal_is_unbiased_for_p_and_biased_low_in_log():
    # Broad posterior (sigma = 1), a proposal that ignores x; bounded weights (q wider than the prior).
    model = LinearGaussian(sigma=1.0)
    x = model.data(4, seed=5)
    reps, s = 4000, 64
    xr = x.repeat(reps, 1)  # row r * 4 + i is repeat r of point i
    q = FixedGaussian(torch.tensor(0.3, dtype=F64), 1.5)
    est = importance_log_likelihood(xr, model.decode, std_normal_log_prior, model.likelihood, q, s,
                                    generator=torch.Generator().manual_seed(6))
    truth = model.marginal.log_prob(x)
    log_ratio = (est.log_px.reshape(reps, 4) - truth)  # (reps, 4)
    ratio = log_ratio.exp()
    for i in range(4):
        # p-hat is unbiased: E[p-hat / p] = 1, within 4 standard errors of the mean over repeats.
        m, sd = float(ratio[:, i].mean()), float(ratio[:, i].std())
        assert abs(m - 1) < 4 * sd / math.sqrt(reps), (i, m, sd)
        # log p-hat is biased low (Jensen), by about se^2 / 2.
        lm, lsd = float(log_ratio[:, i].mean()), float(log_ratio[:, i].std())
        assert lm + 4 * lsd / math.sqrt(reps) < 0, (i, lm, lsd)
        # The reported delta-method error tracks the actual spread of log p-hat across repeats.
        reported = float(est.stderr.reshape(reps, 4)[:, i].mean())
        assert 0.75 < reported / lsd < 1.25, (i, reported, lsd)
    assert float(ratio.std(0).min()) > 0.1, "the proposal is really poor: the estimates scatter"


def nonlinear_decode(u):
    """Monotone in every coordinate, so the posterior is unimodal (though skewed)."""
    return torch.cat([torch.tanh(1.5 * u), 0.5 * u + 0.2 * u**3, torch.exp(0.5 * u)], dim=-1)


def test_one_dimensional_latent_agrees_with_quadrature():
    lik = NormalLikelihood(0.25)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(30, 1, generator=g, dtype=F64)
    x = nonlinear_decode(u) + 0.25 * torch.randn(30, 3, generator=g, dtype=F64)
    exact = quadrature_log_likelihood(x, nonlinear_decode, lik)
    q = fit_proposal(x, nonlinear_decode, std_normal_log_prior, lik, 1, num_components=3, num_per_component=1,
                     steps=1000, batch_size=None, lr=1e-2, hidden=(64, 64), seed=1)
    est = importance_log_likelihood(x, nonlinear_decode, std_normal_log_prior, lik, q, 50000,
                                    generator=torch.Generator().manual_seed(8))
    err = est.log_px - exact
    assert float(err.abs().max()) < 1e-2, err.abs().max()
    assert float(err.abs().mean()) < 3e-3
    assert bool((err.abs() <= 4 * est.stderr + 1e-3).all())
    assert float(est.stderr.max()) < 1e-2


def test_chunking_and_generator_make_the_estimate_reproducible(narrow):
    x = narrow.data(7)
    q = narrow.exact_proposal(1)
    # A mixture proposal that is not exact: shift the means so the weights vary.
    with torch.no_grad():
        q.net[-1].bias[1 : 1 + D_LAT] += 0.2
    args = (x, narrow.decode, std_normal_log_prior, narrow.likelihood, q, 30)
    a = importance_log_likelihood(*args, generator=torch.Generator().manual_seed(9))
    b = importance_log_likelihood(*args, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.log_weights, b.log_weights)
    assert float(a.stderr.min()) > 1e-3
    # Chunks of 4 (point, draw) pairs split the draws too: other draws, the same estimate statistically.
    c = importance_log_likelihood(*args, chunk_size=4, generator=torch.Generator().manual_seed(9))
    assert c.log_weights.shape == (7, 30)
    assert bool(((c.log_px - a.log_px).abs() < 4 * torch.sqrt(a.stderr**2 + c.stderr**2) + 1e-6).all())
    d = importance_log_likelihood(*args, keep_log_weights=False)
    assert d.log_weights is None
    with pytest.raises(ValueError, match="keep_log_weights"):
        _ = d.ess


def test_mixture_proposal_log_prob_is_a_normalized_mixture():
    torch.manual_seed(0)
    q = MixtureProposal(4, 2, num_components=3, hidden=(8,)).double()
    with torch.no_grad():  # spread the components and weights so the mixture is non-trivial
        q.net[-1].bias.copy_(torch.randn_like(q.net[-1].bias))
    x = torch.randn(2, 4, dtype=F64)
    # Brute force: sum_k alpha_k N(z; mu_k, diag sigma_k^2), and a 2-D grid integral of 1.
    log_alpha, loc, scale = q(x)
    grid = torch.linspace(-9, 9, 361, dtype=F64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2).expand(-1, 2, 2)
    lp = q.log_prob(zz, x)  # (G, 2)
    ref = torch.zeros_like(lp)
    for k in range(3):
        comp = torch.distributions.Normal(loc[:, k], scale[:, k]).log_prob(zz).sum(-1)
        ref = ref + (log_alpha[:, k] + comp).exp()
    torch.testing.assert_close(lp, ref.log(), rtol=0, atol=1e-10)
    h = float(grid[1] - grid[0])
    torch.testing.assert_close(lp.exp().sum(0) * h * h, torch.ones(2, dtype=F64), rtol=0, atol=1e-6)
    # Samples: component frequencies follow alpha.
    z = q.sample(x, 40000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (40000, 2, 2)
    torch.testing.assert_close(z.mean(0), (log_alpha.exp().unsqueeze(-1) * loc).sum(1), rtol=0, atol=0.05)


def test_fit_proposal_leaves_the_decoder_and_global_rng_alone(narrow):
    lin = torch.nn.Linear(D_LAT, D_OBS).double()
    x = narrow.data(8)
    before = [p.detach().clone() for p in lin.parameters()]
    state = torch.get_rng_state()
    q1 = fit_proposal(x, lin, std_normal_log_prior, narrow.likelihood, D_LAT, num_components=2,
                      num_per_component=2, steps=5, hidden=(4,), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert all(p.grad is None for p in lin.parameters())
    q2 = fit_proposal(x, lin, std_normal_log_prior, narrow.likelihood, D_LAT, num_components=2,
                      num_per_component=2, steps=5, hidden=(4,), seed=3)
    assert q1.history == q2.history
    assert all(torch.equal(a, b) for a, b in zip(q1.state_dict().values(), q2.state_dict().values()))
    assert not q1.training


def _eval_args(narrow, **over):
    x = narrow.data(3)
    args = {
        "x": x,
        "decode": narrow.decode,
        "log_prior": std_normal_log_prior,
        "likelihood": narrow.likelihood,
        "proposal": narrow.exact_proposal(1),
        "num_samples": 10,
    }
    args.update(over)
    return args


def _nan_x(narrow):
    x = narrow.data(3).clone()
    x[1, 2] = math.nan
    return x


@pytest.mark.parametrize(
    "over, match",
    [
        ({"x": "x"}, "x"),
        ({"x": torch.zeros(5, dtype=F64)}, "x"),
        ({"x": torch.zeros(0, D_OBS, dtype=F64)}, "x"),
        ({"x": torch.zeros(2, D_OBS, dtype=torch.long)}, "x"),
        ({"num_samples": 1}, "num_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"log_prior": lambda z: z.sum()}, "log_prior"),
        ({"decode": lambda z: z}, "decode"),
        (
            {
                "proposal": FixedGaussian(torch.tensor(0.0, dtype=F64), 1.0),
                "log_prior": lambda z: z.sum(-1) * math.nan,
            },
            "NaN",
        ),
    ],
)
def test_importance_bad_inputs_raise(narrow, over, match):
    with pytest.raises(ValueError, match=match):
        importance_log_likelihood(**_eval_args(narrow, **over))


def test_importance_nan_data_raise(narrow):
    with pytest.raises(ValueError, match="x contains NaN"):
        importance_log_likelihood(**_eval_args(narrow, x=_nan_x(narrow)))


def test_all_zero_weights_give_minus_infinity_not_an_error(narrow):
    def zero(z):
        return torch.full(z.shape[:-1], -math.inf, dtype=F64)

    est = importance_log_likelihood(**_eval_args(narrow, log_prior=zero))
    assert bool(torch.isneginf(est.log_px).all())
    assert bool(torch.isposinf(est.stderr).all())


def test_importance_bad_proposal_shapes_raise(narrow):
    class Wrong(FixedGaussian):
        def sample(self, x, num_samples, generator=None):
            return super().sample(x, num_samples, generator)[:, :1]

    with pytest.raises(ValueError, match="proposal.sample"):
        importance_log_likelihood(**_eval_args(narrow, proposal=Wrong(torch.tensor(0.0, dtype=F64), 1.0)))


@pytest.mark.parametrize(
    "over, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"num_components": 0}, "num_components"),
        ({"num_per_component": 0}, "num_per_component"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"final_lr_ratio": 0.0}, "final_lr_ratio"),
        ({"prior_samples": torch.zeros(10, 2, dtype=F64)}, "prior_samples"),
        ({"x": torch.zeros(4, dtype=F64)}, "x"),
    ],
)
def test_fit_proposal_bad_inputs_raise(narrow, over, match):
    args = {"x": narrow.data(4), "decode": narrow.decode, "log_prior": std_normal_log_prior,
                "likelihood": narrow.likelihood, "latent_dim": D_LAT, "steps": 2}
    args.update(over)
    with pytest.raises(ValueError, match=match):
        fit_proposal(**args)


def test_fit_proposal_with_prior_samples_initializes_from_them(narrow):
    x = narrow.data(5)
    ps = 10.0 + 3.0 * torch.randn(500, D_LAT, generator=torch.Generator().manual_seed(0), dtype=F64)
    q = fit_proposal(x, narrow.decode, std_normal_log_prior, narrow.likelihood, D_LAT, num_components=4,
                     steps=1, lr=1e-12, hidden=(8,), prior_samples=ps)
    with torch.no_grad():
        _, loc, scale = q(x)
    # Means start at prior draws (around 10), scales at the draws' sd (about 3).
    assert float((loc - 10).abs().max()) < 15 and float(loc.mean()) > 7
    torch.testing.assert_close(scale, ps.std(0).expand_as(scale), rtol=0.02, atol=0)
