"""Collapse diagnostics against closed forms (linear-Gaussian model, Gaussian encoders) and independent quadrature."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate
from torch.distributions import Independent, Normal

from pyro_mapa import MeanFieldGuide, NormalLikelihood
from pyro_mapa.diagnostics.collapse import (
    CollapseReport,
    active_units,
    collapse_diagnostics,
    model_collapse_kl,
    q_divergences,
)
from pyro_mapa.diagnostics.traversal import latent_traversal_figure
from pyro_mapa.evaluation.latent_posterior import latent_grid

F64 = torch.float64
SIGMA = 0.5
LIK = NormalLikelihood(SIGMA)


def linear_gaussian(d, data_dim=2, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, d, generator=g, dtype=F64)
    b = torch.randn(data_dim, generator=g, dtype=F64)
    x = torch.randn(n, d, generator=g, dtype=F64) @ w.T + b + SIGMA * torch.randn(n, data_dim, generator=g, dtype=F64)
    return w, b, x


def closed_collapse_kl(x, w, b):
    """Mean over x of KL(N(m, S) || N(0, I)) for the linear-Gaussian posterior."""
    d = w.shape[1]
    cov = torch.linalg.inv(torch.eye(d, dtype=F64) + w.T @ w / SIGMA**2)
    mean = (x - b) @ w @ cov / SIGMA**2
    return float((0.5 * (cov.trace() + (mean**2).sum(-1) - d - torch.logdet(cov))).mean())


class LinearEncoder:
    """q(z | x) = N(A x + c, diag s²): Gaussian, so E_x KL(q || p) has a closed form."""

    def __init__(self, a, c, s):
        self.a, self.c, self.s = a, c, s

    def __call__(self, x):
        loc = x @ self.a.T + self.c
        return Independent(Normal(loc, self.s.expand_as(loc)), 1)

    def closed_expected_kl(self, x):
        q = self(x)
        loc, s = q.base_dist.loc, q.base_dist.scale
        return float((0.5 * (s**2 + loc**2 - 1 - 2 * s.log())).sum(-1).mean())


def encoder_1d(scale=0.6, slope=0.5):
    return LinearEncoder(torch.tensor([[slope, -0.3 * slope]], dtype=F64), torch.tensor([0.2], dtype=F64),
                         torch.tensor([scale], dtype=F64))


def reference_aggregate_kl(enc, x):
    """KL(q_agg || N(0, 1)) for a 1-D Gaussian-mixture q_agg by adaptive quadrature (scipy)."""
    q = enc(x)
    locs, scales = q.base_dist.loc[:, 0].numpy(), q.base_dist.scale[:, 0].numpy()

    def integrand(z):
        dens = np.mean(np.exp(-0.5 * ((z - locs) / scales) ** 2) / (scales * math.sqrt(2 * math.pi)))
        log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        return dens * (math.log(dens) - log_p) if dens > 0 else 0.0

    value, err = integrate.quad(integrand, -15, 15, limit=400, epsabs=1e-13, epsrel=1e-12)
    assert err < 1e-9
    return value


@pytest.mark.parametrize("d", [1, 2])
def test_model_collapse_kl_equals_closed_form(d):
    w, b, x = linear_gaussian(d)
    est = model_collapse_kl(x, lambda z: z @ w.T + b, LIK, d)
    assert est.method == "grid" and est.stderr == 0
    assert math.isclose(est.value, closed_collapse_kl(x, w, b), rel_tol=0, abs_tol=1e-8)


@pytest.mark.parametrize("d", [1, 2])
def test_decoder_that_ignores_z_has_exactly_zero_collapse_kl(d):
    _, b, x = linear_gaussian(d)
    const = lambda z: b.expand(z.shape[:-1] + b.shape)
    assert abs(model_collapse_kl(x, const, LIK, d).value) < 1e-13


def test_model_collapse_kl_by_importance_sampling_agrees_with_the_exact_value():
    # d = 1 with the prior as proposal
    w, b, x = linear_gaussian(1, seed=1)
    w = 0.4 * w
    exact = closed_collapse_kl(x, w, b)
    est = model_collapse_kl(x, lambda z: z @ w.T + b, LIK, 1, method="monte_carlo", num_samples=4000,
                            generator=torch.Generator().manual_seed(0))
    assert est.method == "importance sampling" and est.stderr < 0.02 * exact
    assert abs(est.value - exact) < 4 * est.stderr
    # d = 3 with a guide close to the posterior as proposal (the prior would need far more draws)
    w, b, x = linear_gaussian(3, seed=3)
    cov = torch.linalg.inv(torch.eye(3, dtype=F64) + w.T @ w / SIGMA**2)
    a = cov @ w.T / SIGMA**2
    guide = LinearEncoder(a, -a @ b, 1.5 * cov.diagonal().sqrt())
    exact = closed_collapse_kl(x, w, b)
    est = model_collapse_kl(x, lambda z: z @ w.T + b, LIK, 3, proposal=guide, num_samples=4000,
                            generator=torch.Generator().manual_seed(1))
    assert est.stderr < 0.01 * exact
    assert abs(est.value - exact) < 4 * est.stderr


def test_q_divergences_on_the_grid_against_closed_form_and_scipy():
    _, _, x = linear_gaussian(1)
    enc = encoder_1d()
    out = q_divergences(enc, x)
    assert {e.method for e in out} == {"grid"}
    expected = enc.closed_expected_kl(x)
    aggregate = reference_aggregate_kl(enc, x)
    assert math.isclose(out.expected_kl.value, expected, abs_tol=1e-10)
    assert math.isclose(out.aggregate_kl.value, aggregate, abs_tol=1e-9)
    assert math.isclose(out.mutual_information.value, expected - aggregate, abs_tol=1e-9)
    assert out.mutual_information.value > 0.3  # the encoder uses x


def test_q_divergences_by_monte_carlo_agree_with_the_grid():
    for d, scale in ((1, 0.6), (2, 0.5)):
        _, _, x = linear_gaussian(d)
        a = torch.tensor([[0.5, -0.2], [0.1, 0.4]], dtype=F64)[:d]
        enc = LinearEncoder(a, torch.zeros(d, dtype=F64), torch.full((d,), scale, dtype=F64))
        exact = q_divergences(enc, x)
        mc = q_divergences(enc, x, method="monte_carlo", num_samples=500, generator=torch.Generator().manual_seed(0))
        assert mc.expected_kl.method == "closed form"
        assert math.isclose(mc.expected_kl.value, exact.expected_kl.value, abs_tol=1e-8)
        for name in ("aggregate_kl", "mutual_information"):
            e, m = getattr(exact, name), getattr(mc, name)
            assert m.stderr < 0.05 * abs(e.value)
            assert abs(m.value - e.value) < 4 * m.stderr, name


def test_a_guide_too_narrow_for_the_grid_falls_back_to_monte_carlo():
    _, _, x = linear_gaussian(1)
    enc = encoder_1d(scale=1e-3)  # 8 times narrower than the default grid spacing
    out = q_divergences(enc, x, num_samples=200, generator=torch.Generator().manual_seed(0))
    assert out.aggregate_kl.method == "monte carlo" and out.expected_kl.method == "closed form"
    assert math.isclose(out.expected_kl.value, enc.closed_expected_kl(x), rel_tol=1e-12)
    # q_agg is nearly a sum of n point masses: I_q ≈ log n
    assert abs(out.mutual_information.value - math.log(len(x))) < 4 * out.mutual_information.stderr + 1e-3


def test_encoder_that_ignores_x_has_zero_mutual_information():
    _, _, x = linear_gaussian(2)
    enc = LinearEncoder(torch.zeros(2, 2, dtype=F64), torch.tensor([0.3, -0.1], dtype=F64),
                        torch.tensor([0.8, 1.1], dtype=F64))
    out = q_divergences(enc, x)
    assert abs(out.mutual_information.value) < 1e-12
    assert math.isclose(out.aggregate_kl.value, enc.closed_expected_kl(x), abs_tol=1e-9)


def test_active_units_on_a_constructed_encoder():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=F64)
    means = lambda x: torch.stack([x[:, 0], 0.2 * x[:, 1], 0.05 * x[:, 2], torch.ones(len(x), dtype=F64)], -1)
    out = active_units(means, x)
    expected = torch.stack([x[:, 0], 0.2 * x[:, 1], 0.05 * x[:, 2]]).var(dim=1, correction=0)
    assert out.count == 2
    assert torch.allclose(out.variances[:3], expected, rtol=1e-12) and out.variances[3] == 0
    # a guide and a distribution-valued encoder give the same means
    torch.manual_seed(0)
    guide = MeanFieldGuide(torch.nn.Linear(3, 4).double(), x, 2)
    via_guide = active_units(guide, x)
    assert torch.allclose(via_guide.variances, guide.distribution(x).mean.detach().var(0, correction=0))
    assert active_units(means, x, threshold=1e-3).count == 3


def test_collapse_report_collects_every_diagnostic():
    w, b, x = linear_gaussian(1)
    enc = encoder_1d()
    report = collapse_diagnostics(x, 1, encoder=enc, decode=lambda z: z @ w.T + b, likelihood=LIK)
    assert isinstance(report, CollapseReport)
    df = report.to_dataframe()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["metric", "value", "stderr", "method"]
    values = dict(zip(df.metric, df.value))
    assert values["active_units"] == 1
    assert math.isclose(values["model_collapse_kl"], closed_collapse_kl(x, w, b), abs_tol=1e-8)
    assert math.isclose(values["mutual_information"], q_divergences(enc, x).mutual_information.value, abs_tol=1e-14)
    only_means = collapse_diagnostics(x, 1, encoder=lambda x: x[:, :1]).to_dataframe()
    assert list(only_means.metric) == ["active_units", "unit_variance_1"]


def test_bad_arguments_are_named():
    _, _, x = linear_gaussian(1)
    with pytest.raises(ValueError, match="method"):
        q_divergences(encoder_1d(), x, method="exact")
    with pytest.raises(TypeError, match="event shape"):
        q_divergences(lambda x: Normal(x[:, :1], 1.0), x)
    with pytest.raises(ValueError, match="grid mass"):
        q_divergences(encoder_1d(scale=1e-3), x, method="grid")
    with pytest.raises(ValueError, match="latent dimension 1 or 2"):
        q_divergences(LinearEncoder(torch.zeros(3, 2, dtype=F64), torch.zeros(3, dtype=F64),
                                    torch.ones(3, dtype=F64)), x, method="grid")
    with pytest.raises(ValueError, match="decode and likelihood"):
        collapse_diagnostics(x, 1, decode=lambda z: z)


@pytest.mark.parametrize("data_dim", [2, 3])
def test_latent_traversal_decodes_prior_quantiles(data_dim):
    w = torch.arange(1.0, 1.0 + 2 * data_dim).reshape(data_dim, 2)
    decode = lambda z: torch.tanh(z) @ w.T
    fig = latent_traversal_figure(decode, 2, num_steps=5, data=torch.randn(10, data_dim) if data_dim == 2 else None)
    assert isinstance(fig, matplotlib.figure.Figure)
    q = Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5, dtype=F64)).float()
    axes = fig.axes
    assert len(axes) == (1 if data_dim == 2 else data_dim)
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    for j in range(2):  # latent j moves through the quantiles, the other stays at 0
        z = torch.zeros(5, 2)
        z[:, j] = q
        path = decode(z)
        for k, ax in enumerate(axes):  # one panel in the data plane, or one per output
            line = ax.get_lines()[j]
            xs, ys = (path[:, 0], path[:, 1]) if data_dim == 2 else (q, path[:, k])
            assert np.allclose(line.get_xdata(), xs.double().numpy(), atol=1e-6)
            assert np.allclose(line.get_ydata(), ys.double().numpy(), atol=1e-6)
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_monte_carlo_without_a_closed_form_kl_agrees_with_the_grid():
    """A Student-t guide: torch has no KL to a Normal, so every term is Monte Carlo."""
    _, _, x = linear_gaussian(1)

    def student(x):
        return Independent(torch.distributions.StudentT(10.0, 0.5 * x[:, :1], torch.full_like(x[:, :1], 0.6)), 1)

    exact = q_divergences(student, x, grid=latent_grid(1, 4001, -30.0, 30.0))
    mc = q_divergences(student, x, method="monte_carlo", num_samples=2000)
    for e, m in zip(exact, mc):
        assert m.method == "monte carlo" and m.stderr < 0.05 * abs(e.value)
        assert abs(m.value - e.value) < 4 * m.stderr


def test_importance_sampling_standard_error_matches_the_spread_over_seeds():
    w, b, x = linear_gaussian(1, n=5, seed=1)
    decode = lambda z: z @ (0.4 * w).T + b
    runs = [
        model_collapse_kl(x, decode, LIK, 1, method="monte_carlo", num_samples=300,
                          generator=torch.Generator().manual_seed(s))
        for s in range(60)
    ]
    spread = float(np.std([r.value for r in runs], ddof=1))
    reported = float(np.sqrt(np.mean([r.stderr**2 for r in runs])))
    assert 0.7 < reported / spread < 1.4
