import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch
from conftest import make_empiricalized

from pyro_mapa import NormalLikelihood, PosteriorTable
from pyro_mapa.diagnostics import (
    TrainingTrace,
    importance_diagnostics,
    index_posterior,
    kish_ess,
    proposal_quality,
)
from pyro_mapa.diagnostics.inference_data import aggregate_posterior, to_inference_data
from pyro_mapa.evaluation import gauss_legendre_grid, importance_log_likelihood
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit

warnings.filterwarnings("ignore", category=FutureWarning)


def test_index_posterior_is_eq7():
    model, x, lik = make_empiricalized(n=9)
    lp = index_posterior(model.codebook, lik)
    cb = model.codebook
    centers = cb.decoder(cb.encoder(x)).detach()
    for n in range(9):
        ll = torch.stack([lik(centers[i]).log_prob(x[n]) for i in range(9)])
        torch.testing.assert_close(lp[n], ll - ll.logsumexp(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(9))


def test_proposal_equal_to_posterior_is_perfect():
    model, _, lik = make_empiricalized(n=15)
    lp = index_posterior(model.codebook, lik)
    table = PosteriorTable.from_log_probs(lp)
    q = proposal_quality(table, lp, num_top=3)
    torch.testing.assert_close(q.kl, torch.zeros(15), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.tv, torch.zeros(15), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.remainder_ess_fraction, torch.ones(15), atol=1e-4, rtol=0)
    # The top-3 of q are the top-3 of p: their mass is p's three largest.
    torch.testing.assert_close(q.top_k_mass, lp.exp().topk(3, dim=1).values.sum(1), atol=1e-5, rtol=0)


def test_proposal_quality_closed_form_on_a_small_case():
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    q = PosteriorTable.from_log_probs(torch.log(torch.tensor([[0.2, 0.2, 0.6]])))
    res = proposal_quality(q, log_p, num_top=1)  # q's top-1 is index 2
    p, qq = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    assert float(res.kl[0]) == pytest.approx(float((p * (p / qq).log()).sum()), rel=1e-5)
    assert float(res.tv[0]) == pytest.approx(0.4, rel=1e-5)
    assert float(res.top_k_mass[0]) == pytest.approx(0.2, rel=1e-5)
    pr, qr = torch.tensor([0.5, 0.3]) / 0.8, torch.tensor([0.5, 0.5])
    assert float(res.remainder_ess_fraction[0]) == pytest.approx(float(1 / (pr**2 / qr).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="columns"):
        proposal_quality(q, torch.zeros(1, 4))


def test_kish_ess():
    assert float(kish_ess(torch.zeros(7))) == pytest.approx(7.0)
    assert float(kish_ess(torch.tensor([0.0, -1e4, -1e4]))) == pytest.approx(1.0)


def test_importance_diagnostics_k_hat_and_degenerate_weights():
    g = torch.Generator().manual_seed(0)
    good = 0.1 * torch.randn(20, 2000, generator=g, dtype=torch.float64)  # near-constant weights
    heavy = torch.distributions.StudentT(1.0).sample((20, 2000)).abs().log().double()  # Cauchy weights: k ~ 1
    d_good, d_heavy = importance_diagnostics(good), importance_diagnostics(heavy)  # no ArviZ warning escapes
    assert d_good.meaningful.all() and (d_good.pareto_k < 0.3).all()
    assert np.median(d_heavy.pareto_k) > 0.7
    np.testing.assert_allclose(d_good.ess, kish_ess(good).numpy())
    discrete = torch.tensor([[0.0, -1.0, 0.0, -1.0] * 10])
    d = importance_diagnostics(discrete)
    assert not d.meaningful[0] and math.isnan(d.pareto_k[0])  # not inf: flagged instead
    assert d.ess[0] == pytest.approx(float(kish_ess(discrete[0])))
    # Constant rows (to rounding) have no tail: k = -inf, not ArviZ's division by zero.
    const = torch.stack([torch.full((500,), -3.0), -3.0 + 1e-7 * torch.randn(500, generator=g)])
    d = importance_diagnostics(const)
    assert d.meaningful.all() and np.isneginf(d.pareto_k).all()
    np.testing.assert_allclose(d.ess, [500.0, 500.0], rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        importance_diagnostics(torch.zeros(5))
    with pytest.raises(TypeError, match="floating point"):
        importance_diagnostics(torch.zeros(2, 5, dtype=torch.long))


class _ScaledPosterior:
    """Proposal N(m, (c s)^2) for the exact posterior N(m, s^2) of z ~ N(0, 1), x | z ~ N(z, 0.5^2)."""

    var = 0.25 / 1.25

    def __init__(self, c: float) -> None:
        self.c = c

    def sample(self, x, num, generator=None):
        eps = torch.randn((num,) + x.shape, generator=generator, dtype=x.dtype)
        return x / 1.25 + self.c * math.sqrt(self.var) * eps

    def log_prob(self, z, x):
        return torch.distributions.Normal(x / 1.25, self.c * math.sqrt(self.var)).log_prob(z).sum(-1)


def _standard_normal_log_prob(z):
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def _weights(c: float, num_samples: int = 2000):
    x = torch.linspace(-2, 2, 20, dtype=torch.float64).unsqueeze(-1)
    est = importance_log_likelihood(x, lambda z: z, _standard_normal_log_prob, NormalLikelihood(0.5), _ScaledPosterior(c),
                                    num_samples=num_samples, generator=torch.Generator().manual_seed(1))
    exact = torch.distributions.Normal(0.0, math.sqrt(1.25)).log_prob(x[:, 0])
    return est, exact, importance_diagnostics(est.log_weights)


def test_pareto_k_and_ess_known_answers():
    """Proposal = posterior scaled by c: weights ∝ exp((1 - c²) ε² / 2), so the tail shape is k = 1 - c²
    for c < 1 and the weights are bounded (k < 0) for c > 1; Kish ESS / S -> 1 / E[w²] =
    sqrt(2 - 1/c²) / c (finite for c² > 1/2)."""
    est, exact, d = _weights(1.0)  # the exact posterior: every weight is p(x)
    torch.testing.assert_close(est.log_px, exact, atol=1e-6, rtol=0)
    np.testing.assert_allclose(d.ess, 2000, rtol=1e-9)
    assert np.isneginf(d.pareto_k).all() and d.meaningful.all()
    _, _, d = _weights(1.5)  # wider than the posterior: bounded weights
    assert (d.pareto_k < 0).all()
    assert np.mean(d.ess) / 2000 == pytest.approx(math.sqrt(2 - 1 / 1.5**2) / 1.5, abs=0.01)
    _, _, d = _weights(0.8)  # k = 0.36: finite variance
    assert abs(np.median(d.pareto_k) - 0.36) < 0.1 and (d.pareto_k < d.k_threshold).all()
    _, _, d = _weights(0.3, 4000)  # k = 0.91: infinite variance, flagged
    assert np.median(d.pareto_k) > 0.7 and d.summary()["share_k_above_threshold"] > 0.5
    assert np.median(d.ess) < 0.1 * 4000


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    ds = load_dataset("circle", num_train=120, num_valid=40, num_test=40, seed=2)
    out = {}
    for method in ("MAPA", "VAE", "MAPA-free"):
        import pyro

        pyro.clear_param_store()
        setup = build_method(method, ds.train, ds.likelihood, hidden=(16,), seed=1)
        fit(setup.model, setup.guide, setup.loss, 120, epochs=15, batch_size=40, lr=1e-2, progress=False)
        out[method] = setup
    return ds, out


def test_to_inference_data_mapa(trained):
    ds, setups = trained
    s = setups["MAPA"]
    idata = to_inference_data(s.model, s.guide, None, num_draws=25)
    assert idata.posterior["c"].shape == (1, 25, 120)
    assert idata.posterior["code"].shape == (1, 25, 120, 1)
    assert idata.sample_stats["log_lik_x"].shape == (1, 25, 120)
    np.testing.assert_array_equal(idata.observed_data["x"].values, ds.train.numpy())
    c = torch.as_tensor(idata.posterior["c"].values[0, 3])
    with torch.no_grad():
        cb = s.model.codebook
        np.testing.assert_allclose(idata.posterior["code"].values[0, 3], cb.codes(c).numpy(), rtol=1e-6)
        ll = s.likelihood(cb(c)).log_prob(ds.train)
        np.testing.assert_allclose(idata.sample_stats["log_lik_x"].values[0, 3], ll.numpy(), rtol=1e-5, atol=1e-5)
        # log weight = log p(x|c) + log(1/N) - log q(c|x)
        log_q = s.guide.distribution(torch.arange(120)).log_prob(c)
        lw = ll - math.log(120) - log_q
        np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0, 3], lw.numpy(), rtol=1e-5, atol=1e-4)
    # No log_likelihood group: PSIS-LOO would read the per-point latents as shared parameters.
    assert "log_likelihood" not in idata.groups()
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(idata)


def test_to_inference_data_free_codes(trained):
    _, setups = trained
    s = setups["MAPA-free"]
    idata = to_inference_data(s.model, s.guide, None, num_draws=5)
    c = torch.as_tensor(idata.posterior["c"].values[0, 2])
    # The drawn index's own free code, not an encoder's output (there is none).
    np.testing.assert_array_equal(idata.posterior["code"].values[0, 2], s.model.codebook.z.detach()[c].numpy())


def test_to_inference_data_vae(trained):
    _, setups = trained
    s = setups["VAE"]
    idata = to_inference_data(s.model, s.guide, None, num_draws=20)
    assert idata.posterior["z"].shape == (1, 20, 120, 1)
    assert "code" not in idata.posterior
    assert "posterior_predictive" not in idata.groups() and "prior" not in idata.groups()
    lw = idata.sample_stats["log_weight"].values[0].T  # (n, S)
    assert np.isfinite(lw).all()
    with pytest.raises(ValueError, match="num_draws"):
        to_inference_data(s.model, s.guide, None, num_draws=0)
    with pytest.raises(TypeError, match="learned_model"):
        to_inference_data(s.model, s.guide, None, num_draws=2, learned_model=object())
    with pytest.raises(ValueError, match="no prior group"):
        aggregate_posterior(idata)


def _quadrature_mean(learned) -> np.ndarray:
    """E[x] = ∫ decode(u) N(u; 0, 1) du under the learned model (the noise has mean zero)."""
    u, log_w = gauss_legendre_grid(4001, -8.0, 8.0)
    with torch.no_grad():
        means = learned.decode(u.float().unsqueeze(-1)).double()
    return (log_w.exp().unsqueeze(-1) * means).sum(0).numpy()


# ArviZ 0.x's plot_ppc passes a dict to matplotlib's normalize_kwargs, deprecated in matplotlib 3.11.
@pytest.mark.filterwarnings("ignore:Passing a dict or None as alias_mapping:matplotlib.MatplotlibDeprecationWarning")
@pytest.mark.parametrize("method", ["MAPA", "VAE"])
def test_posterior_predictive_and_prior_come_from_the_learned_model(trained, method):
    _, setups = trained
    s = setups[method]
    learned = s.learned_model()
    idata = to_inference_data(s.model, s.guide, None, num_draws=10, learned_model=learned, num_predictive=50)
    pp = idata.posterior_predictive["x"].values
    assert pp.shape == (1, 50, 120, 2) and idata.observed_data["x"].shape == (120, 2)
    # The replicate draws' mean matches the learned model's E[x] (quadrature) within 4 standard errors.
    flat = pp.reshape(-1, 2)
    se = flat.std(0) / math.sqrt(len(flat))
    assert (se < 0.01).all()
    assert (np.abs(flat.mean(0) - _quadrature_mean(learned)) < 4 * se).all()
    post, prior = aggregate_posterior(idata)
    code = "code" if method == "MAPA" else "z"
    assert idata.prior[code].shape == idata.posterior[code].shape == (1, 10, 120, 1)
    np.testing.assert_array_equal(post, idata.posterior[code].values.reshape(-1, 1))
    if method == "VAE":  # the prior is N(0, 1)
        assert abs(prior.mean()) < 4 / math.sqrt(prior.size) and abs(prior.std() - 1) < 4 / math.sqrt(2 * prior.size)
    else:  # the copula reproduces the codes' distribution: same quantiles
        codes = s.model.codebook.codes().detach().numpy().reshape(-1)
        q = [0.1, 0.5, 0.9]
        np.testing.assert_allclose(np.quantile(prior, q), np.quantile(codes, q), atol=0.1 * codes.std())
    ax = az.plot_ppc(idata, num_pp_samples=5)
    assert np.asarray(ax).size >= 1


def test_mapa_table_quality_improves_with_training(trained):
    """MAPA's top-K holds more of the trained model's posterior mass than the uniform table's top-K.

    (KL and TV are not compared: after 15 epochs the model's posterior is still broader than
    the kernel, and both punish a too-peaked q harder than the flat uniform one.)"""
    _, setups = trained
    s = setups["MAPA"]
    lp = index_posterior(s.model.codebook, s.likelihood)
    q_mapa = proposal_quality(s.guide.table, lp, num_top=5)
    q_unif = proposal_quality(PosteriorTable.uniform(120), lp, num_top=5)
    assert q_mapa.top_k_mass.mean() > 2 * q_unif.top_k_mass.mean()


def test_training_trace(trained):
    ds, setups = trained
    s = setups["MAPA"]
    calls = []

    def valid_ll():
        calls.append(1)
        return float(s.learned_model().log_prob(ds.valid, num_points=501).mean())

    trace = TrainingTrace(valid_ll=valid_ll, every=2)
    fit(s.model, s.guide, s.loss, 120, epochs=4, batch_size=40, progress=False, callback=trace)
    df = trace.to_dataframe()
    assert list(df["epoch"]) == [0, 1, 2, 3] and len(calls) == 2
    assert df["valid_ll"].notna().sum() == 2 and np.isfinite(df["loss"]).all()
    fig = trace.plot()
    assert len(fig.axes) == 2


@pytest.mark.slow
def test_diagnostics_tutorial_runs_at_real_settings(tmp_path):
    """The tutorial at its real settings (CI unset: 200 epochs, 2000 proposal steps), with its plots."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, str(root / "tutorials" / "diagnostics_with_arviz.py")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=3600, check=False)
    print(out.stdout)  # the tutorial's numbers, shown with pytest -s
    assert out.returncode == 0, out.stderr[-3000:]
    assert "az.loo: log likelihood not found" in out.stdout
    for plot in ("compare", "khat", "ppc", "codes", "proposal_quality", "training_trace"):
        assert (tmp_path / f"diagnostics_{plot}.png").stat().st_size > 10_000, plot
