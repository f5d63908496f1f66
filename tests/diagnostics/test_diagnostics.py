import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch

from conftest import make_empiricalized
from pyro_mapa import PosteriorTable
from pyro_mapa.experiments.datasets import load_dataset
from pyro_mapa.diagnostics import (
    TrainingTrace,
    importance_diagnostics,
    index_posterior,
    kish_ess,
    proposal_quality,
    to_inference_data,
)
from pyro_mapa.experiments.methods import build_method
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
    model, x, lik = make_empiricalized(n=15)
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
    d_good, d_heavy = importance_diagnostics(good), importance_diagnostics(heavy)
    assert d_good.meaningful.all() and (d_good.pareto_k < 0.3).all()
    assert np.median(d_heavy.pareto_k) > 0.7
    np.testing.assert_allclose(d_good.ess, kish_ess(good).numpy())
    discrete = torch.tensor([[0.0, -1.0, 0.0, -1.0] * 10])
    d = importance_diagnostics(discrete)
    assert not d.meaningful[0] and math.isnan(d.pareto_k[0])  # not inf: flagged instead
    assert d.ess[0] == pytest.approx(float(kish_ess(discrete[0])))
    with pytest.raises(ValueError, match="shape"):
        importance_diagnostics(torch.zeros(5))


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    ds = load_dataset("circle", num_train=120, num_valid=40, num_test=40, seed=2)
    out = {}
    for method in ("MAPA", "VAE"):
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
    assert idata.log_likelihood["x"].shape == (1, 25, 120)
    np.testing.assert_array_equal(idata.observed_data["x"].values, ds.train.numpy())
    c = torch.as_tensor(idata.posterior["c"].values[0, 3])
    with torch.no_grad():
        cb = s.model.codebook
        np.testing.assert_allclose(idata.posterior["code"].values[0, 3], cb.codes(c).numpy(), rtol=1e-6)
        ll = s.likelihood(cb(c)).log_prob(ds.train)
        np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 3], ll.numpy(), rtol=1e-5, atol=1e-5)
        # log weight = log p(x|c) + log(1/N) - log q(c|x)
        log_q = s.guide.distribution(torch.arange(120)).log_prob(c)
        lw = ll - math.log(120) - log_q
        np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0, 3], lw.numpy(), rtol=1e-5, atol=1e-4)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_to_inference_data_vae(trained):
    ds, setups = trained
    s = setups["VAE"]
    idata = to_inference_data(s.model, s.guide, None, num_draws=20)
    assert idata.posterior["z"].shape == (1, 20, 120, 1)
    assert "code" not in idata.posterior
    lw = idata.sample_stats["log_weight"].values[0].T  # (n, S)
    # The mean importance weight estimates p(x): log-mean-exp is a (noisy) lower-ish estimate, finite.
    assert np.isfinite(lw).all()
    with pytest.raises(ValueError, match="num_draws"):
        to_inference_data(s.model, s.guide, None, num_draws=0)


def test_mapa_table_quality_improves_with_training(trained):
    """MAPA's top-K holds more of the trained model's posterior mass than the uniform table's top-K.

    (KL and TV are not compared: after 15 epochs the model's posterior is still broader than
    the kernel, and both punish a too-peaked q harder than the flat uniform one.)"""
    ds, setups = trained
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
