"""``compare``: pointwise held-out log p(x) per model as ArviZ ELPD data, ranked by ``az.compare``."""

import itertools
import math

import arviz as az
import matplotlib
import numpy as np
import pyro
import pytest
import torch
from torch import nn

from pyro_mapa.diagnostics import _arviz_compat as compat
from pyro_mapa.diagnostics.compare import compare, pointwise_log_likelihood
from pyro_mapa.evaluation import ImportanceEstimate
from pyro_mapa.datasets import load_dataset, true_decoder
from pyro_mapa.methods import LearnedModel, build_method
from pyro_mapa.models import NormalLikelihood
from pyro_mapa.training import fit

matplotlib.use("Agg")


class _Decoder(nn.Module):
    """The circle's true decoder as a module (what a LearnedModel holds)."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.f, self.shift = true_decoder("circle"), shift

    def forward(self, z):
        return self.f(z) + self.shift


def _exact_sums(result):
    return {m: float(pw.log_px.sum()) for m, pw in result.pointwise.items()}


def test_constructed_models_rank_as_their_exact_likelihoods():
    """Truth vs a shifted decoder and a too-wide noise: known order, checked against the data set's own quadrature."""
    ds = load_dataset("circle", num_train=10, num_valid=10, num_test=200, seed=3)
    truth = LearnedModel(_Decoder(), NormalLikelihood(0.05))
    wide = LearnedModel(_Decoder(), NormalLikelihood(0.10))  # right curve, noise twice too wide: < 0.64 nats/point
    shifted = LearnedModel(_Decoder(0.15), NormalLikelihood(0.05))  # curve moved by 3 sigma per coordinate
    result = compare({"shifted": shifted, "wide": wide, "truth": truth}, ds.test)
    table = result.table
    assert result.ranking == ["truth", "wide", "shifted"]
    # The elpd is the sum of the exact pointwise values, computed here by the data set's quadrature.
    ref = ds.true_log_prob(ds.test).double()
    assert table.loc["truth", compat.ELPD_COLUMN] == pytest.approx(float(ref.sum()), abs=1e-2)
    assert table.loc["truth", "se"] == pytest.approx(math.sqrt(len(ref) * float(ref.var(unbiased=False))), rel=1e-4)
    # elpd_diff and dse: the paired pointwise differences from the best model.
    for name in ("wide", "shifted"):
        diff = (result.pointwise["truth"].log_px - result.pointwise[name].log_px).numpy()
        assert abs(table.loc[name, "elpd_diff"]) == pytest.approx(diff.sum(), rel=1e-9)  # 1.x: model - best
        assert table.loc[name, "dse"] == pytest.approx(math.sqrt(len(diff) * diff.var()), rel=1e-9)
        assert diff.sum() > 4 * table.loc[name, "dse"]  # a real, resolved difference
    assert (table["p_loo" if compat.ARVIZ_MAJOR < 1 else "p"] == 0).all()
    assert list(table["method"]) == ["exact"] * 3 and (table["mc_se"] == 0).all()
    np.testing.assert_allclose(compat.elpd_pointwise(result.elpd["truth"]), ref.numpy(), atol=1e-4)
    ax = az.plot_compare(table, order_by_rank=False)  # the table is ranked; ArviZ 0.x sorts in place otherwise
    assert len(ax.get_yticklabels()) >= 3


def test_generic_models_and_precomputed_values():
    ds = load_dataset("circle", num_train=10, num_valid=10, num_test=50, seed=4)
    exact = ds.true_log_prob(ds.test).double()

    class HasLogProb:
        def log_prob(self, x):
            return ds.true_log_prob(x)

    worse = exact - torch.linspace(0.5, 1.5, 50, dtype=torch.float64)
    est = ImportanceEstimate(worse, torch.full((50,), 0.01, dtype=torch.float64),
                             torch.randn(50, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    result = compare({"object": HasLogProb(), "array": worse.numpy() - 1.0, "estimate": est}, ds.test)
    assert result.ranking == ["object", "estimate", "array"]
    assert result.pointwise["estimate"].method == "importance"
    assert result.pointwise["estimate"].mc_se == pytest.approx(0.01 * math.sqrt(50))
    assert result.pointwise["estimate"].diagnostics.pareto_k.shape == (50,)
    assert result.pointwise["object"].method == result.pointwise["array"].method == "exact"


def test_compare_refuses_bad_input():
    ds = load_dataset("circle", num_train=10, num_valid=10, num_test=20, seed=5)
    good = ds.true_log_prob(ds.test)
    with pytest.raises(ValueError, match="non-empty dict"):
        compare({}, ds.test)
    with pytest.raises(TypeError, match="models must be a dict"):
        compare([good], ds.test)
    with pytest.raises(TypeError, match="names must be strings"):
        compare({1: good}, ds.test)
    with pytest.raises(ValueError, match="x_test"):
        compare({"a": good}, ds.test[0])
    with pytest.raises(TypeError, match="log_prob"):
        compare({"a": object()}, ds.test)
    with pytest.raises(ValueError, match=r"expected \(20,\)"):
        compare({"a": good[:5]}, ds.test)
    bad = good.clone()
    bad[3] = -math.inf
    with pytest.raises(ValueError, match="not finite on 1 test point"):
        compare({"a": bad}, ds.test)
    with pytest.raises(ValueError, match="method must be one of"):
        compare({"a": good}, ds.test, method="psis")
    with pytest.raises(ValueError, match="needs a LearnedModel"):
        pointwise_log_likelihood(good, ds.test, method="importance")


def test_compare_names_the_column_mismatch_and_warns_on_one_test_point():
    ds = load_dataset("circle", num_train=10, num_valid=10, num_test=20, seed=5)
    truth = LearnedModel(_Decoder(), NormalLikelihood(0.05))
    three = torch.cat([ds.test, ds.test[:, :1]], 1)
    with pytest.raises(ValueError, match=r"model 'truth': x_test has 3 columns, the model 2"):
        compare({"truth": truth}, three)
    with pytest.raises(ValueError, match=r"model 'truth': x has 3 columns, the model 2"):
        pointwise_log_likelihood(truth, three, name="truth")
    setup = build_method("VAE", ds.train, ds.likelihood, hidden=(4,))
    with pytest.raises(ValueError, match=r"model 'VAE': x_test has 3 columns, the model 2"):
        compare({"VAE": setup}, three)
    nan_row = ds.test.clone()
    nan_row[4, 0] = math.nan
    with pytest.raises(ValueError, match="x_test contains NaN"):
        compare({"truth": truth}, nan_row)
    with pytest.warns(UserWarning, match="compare got 1 test point: the standard errors se and dse"):
        result = compare({"truth": truth, "wide": LearnedModel(_Decoder(), NormalLikelihood(0.1))}, ds.test[:1])
    assert (result.table["se"] == 0).all()  # what the warning is about
    # Two points: no warning (warnings are errors in this suite).
    compare({"truth": truth}, ds.test[:2])


@pytest.fixture(scope="module")
def trained():
    """MAPA, IWAE and a VAE, briefly trained on 100 points of the circle (1-D latent)."""
    ds = load_dataset("circle", num_train=100, num_valid=10, num_test=60, seed=0)
    setups = {}
    for name in ("MAPA", "IWAE", "VAE"):
        pyro.clear_param_store()
        setups[name] = build_method(name, ds.train, ds.likelihood, hidden=(16,), seed=0)
        fit(setups[name].model, setups[name].guide, setups[name].loss, 100, epochs=15, batch_size=50, lr=1e-2,
            progress=False)
    return ds, setups


# ArviZ 0.x's plot_khat passes a dict to matplotlib's normalize_kwargs, deprecated in matplotlib 3.11.
@pytest.mark.filterwarnings("ignore:Passing a dict or None as alias_mapping:matplotlib.MatplotlibDeprecationWarning")
def test_trained_models_exact_and_importance_sampled_agree(trained):
    """For each trained model, the importance-sampled elpd matches the exact quadrature sum within its
    Monte-Carlo error, and ``compare`` ranks MAPA, IWAE and VAE as their exact log-likelihoods do."""
    ds, setups = trained
    exact = compare(setups, ds.test)
    sums = _exact_sums(exact)
    for name, s in setups.items():
        ref = s.learned_model().log_prob(ds.test).double()  # the exact quadrature, computed independently here
        assert sums[name] == pytest.approx(float(ref.sum()), abs=1e-6)
    assert exact.ranking == sorted(sums, key=sums.get, reverse=True)

    sampled = compare(setups, ds.test, method="importance", num_samples=1000, fit_steps=300)
    for name in setups:
        pw = sampled.pointwise[name]
        mc = pw.mc_se
        assert pw.method == "importance" and pw.diagnostics.pareto_k.shape == (60,)
        assert 0 < mc < 0.01 * abs(sums[name])  # the Monte-Carlo error is small against the value
        # log p-hat is biased low by about se^2 / 2 per point (Jensen); the sum by mc^2 / 2.
        assert abs(float(pw.log_px.sum()) + mc**2 / 2 - sums[name]) < 4 * mc
    # The ranking is resolvable: every exact gap exceeds the combined Monte-Carlo error 4 times over ...
    order = exact.ranking
    for a, b in itertools.pairwise(order):
        assert sums[a] - sums[b] > 4 * math.hypot(sampled.pointwise[a].mc_se, sampled.pointwise[b].mc_se)
    # ... and the importance-sampled comparison finds it.
    assert sampled.ranking == order
    k = sampled.elpd[order[0]]
    assert np.asarray(k["pareto_k"] if compat.ARVIZ_MAJOR < 1 else k.pareto_k).shape == (60,)
    ax = az.plot_khat(sampled.elpd[order[0]])
    assert len(ax.collections) >= 1


def test_latent_dimension_three_is_importance_sampled_and_matches_the_closed_form():
    """A linear decoder x = W z + noise, z ~ N(0, I_3): log p(x) = log N(x; 0, W W^T + s^2 I) exactly."""
    torch.manual_seed(0)
    decoder = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.8, -0.6]]))
    learned = LearnedModel(decoder, NormalLikelihood(0.3), latent_dim=3)
    cov = decoder.weight.detach().double() @ decoder.weight.detach().double().T + 0.09 * torch.eye(2, dtype=torch.float64)
    x = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).sample((30,)).float()
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(x.double())
    pw = compare({"linear": learned}, x, num_samples=500, fit_steps=200).pointwise["linear"]
    assert pw.method == "importance" and pw.num_samples == 500  # "auto" samples above two latent dimensions
    assert 0 < pw.mc_se < 0.01 * abs(float(exact.sum()))
    assert abs(float(pw.log_px.sum()) + pw.mc_se**2 / 2 - float(exact.sum())) < 4 * pw.mc_se
    assert np.median(pw.diagnostics.pareto_k) < 0.5  # a Gaussian posterior is easy for the fitted mixture
