"""examples/ppca.py: MAPA on probabilistic PCA, every number against a closed form."""

import importlib.util
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_mapa import GaussianKernel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, empiricalize

_PATH = Path(__file__).resolve().parents[2] / "examples" / "ppca.py"
_spec = importlib.util.spec_from_file_location("ppca_example", _PATH)
ppca_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppca_example)

N, D, SIGMA = 30, 4, 0.4


def setup(model, seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    x, _ = ppca_example.make_data(N, D, 1, seed=seed)
    encoder = nn.Linear(D, 1)
    emp = empiricalize(model, "z", encoder, x)
    table = PosteriorTable.from_data(x, GaussianKernel(0.5))
    return x, encoder, emp, table


def fixed_sigma(xb):
    return ppca_example.ppca(xb, 1, SIGMA)


@pytest.mark.parametrize("rows", [torch.arange(N), torch.tensor([0, 4, 9, 28])])
def test_k_equal_n_is_the_closed_form_empiricalized_loglik(rows):
    x, encoder, emp, table = setup(fixed_sigma)
    loss = TraceMAPA_ELBO(num_top=N).loss(emp, MAPAGuide(table, site="z"), x[rows], rows=rows)
    with torch.no_grad():
        exact = ppca_example.empiricalized_log_likelihood(
            pyro.param("W"), pyro.param("mu"), SIGMA, encoder(x), x
        )
    assert loss == pytest.approx(-(N / len(rows)) * float(exact[rows].sum()), rel=1e-5)


def test_bound_is_below_the_exact_value_in_expectation():
    x, encoder, emp, table = setup(fixed_sigma)
    rows = torch.arange(N)
    elbo = TraceMAPA_ELBO(num_top=2, num_samples=3)
    pyro.set_rng_seed(1)
    draws = torch.tensor([-elbo.loss(emp, MAPAGuide(table, site="z"), x, rows=rows) for _ in range(300)], dtype=torch.float64)
    with torch.no_grad():
        exact = float(ppca_example.empiricalized_log_likelihood(pyro.param("W"), pyro.param("mu"), SIGMA, encoder(x), x).sum())
    assert exact - float(draws.mean()) > 3 * float(draws.std()) / math.sqrt(len(draws))


def test_global_noise_scale_bound_is_exact_in_expectation_and_below_log_p():
    """σ a global latent with an AutoNormal guide: E_q[bound at K = N] by quadrature over log σ."""
    x, encoder, emp, table = setup(lambda xb: ppca_example.ppca_global_noise(xb, 1))
    guide = MAPAGuide(table, site="z", globals_guide=AutoNormal(poutine.block(emp, hide=["z"])))
    elbo = TraceMAPA_ELBO(num_top=N)
    rows = torch.arange(N)
    pyro.set_rng_seed(2)
    draws = torch.tensor([-elbo.loss(emp, guide, x, rows=rows) for _ in range(1500)], dtype=torch.float64)
    loc, scale = pyro.param("AutoNormal.locs.sigma").item(), pyro.param("AutoNormal.scales.sigma").item()
    with torch.no_grad():
        W, mu, codes = pyro.param("W").detach(), pyro.param("mu").detach(), encoder(x)
    u = torch.linspace(-9, 9, 3001, dtype=torch.float64)
    w = torch.full_like(u, float(u[1] - u[0]))
    sig = (loc + scale * u).exp()
    total = torch.stack([ppca_example.empiricalized_log_likelihood(W, mu, s, codes, x).sum() for s in sig])
    lp = dist.LogNormal(torch.tensor(-1.0, dtype=torch.float64), 0.5).log_prob(sig)
    lq = dist.LogNormal(torch.tensor(loc, dtype=torch.float64), scale).log_prob(sig)
    phi = dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(u).exp()
    expected = float((w * phi * (total + lp - lq)).sum())
    log_px = float(torch.logsumexp(w.log() + total + lp + sig.log() + math.log(scale), 0))
    se = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - expected) < 4 * se
    assert float(draws.mean()) < log_px


def test_mle_ppca_is_the_maximum_likelihood():
    x, truth = ppca_example.make_data(500, D, 1, seed=3)
    W, mu, s = ppca_example.mle_ppca(x, 1)
    best = float(ppca_example.ppca_marginal(W, mu, s, x).sum())
    assert best > float(ppca_example.ppca_marginal(truth["W"], truth["mu"], truth["sigma"], x).sum())
    for scale in (0.9, 1.1):  # a perturbed W or sigma is worse
        assert best > float(ppca_example.ppca_marginal(W * scale, mu, s, x).sum())
        assert best > float(ppca_example.ppca_marginal(W, mu, s * scale, x).sum())


def test_smoke_run_trains_and_the_grid_matches_the_closed_form():
    res = ppca_example.run(n=100, epochs=4)
    assert res["train_loss"][-1] < res["train_loss"][0]
    ll = res["test_loglik"]
    assert ll["MAPA (KDE prior), grid"] == pytest.approx(ll["MAPA (KDE prior), closed form"], abs=1e-4)
