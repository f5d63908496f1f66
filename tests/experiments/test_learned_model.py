"""LearnedModel: its importance-sampled log-likelihood agrees with the exact one, for every kind of prior."""

import pytest
import torch

from pyro_mapa import NormalLikelihood, mlp
from pyro_mapa.priors import LearnedModel
from pyro_mapa.priors import GaussianCopulaPrior


@pytest.mark.parametrize("copula", [False, True])
def test_importance_log_prob_matches_quadrature(copula):
    torch.manual_seed(0)
    prior = GaussianCopulaPrior(torch.randn(200, 1) * 2 + 1) if copula else None
    model = LearnedModel(mlp(1, 2, (8,)), NormalLikelihood(0.3), prior)
    x = torch.randn(20, 2)
    est = model.importance_log_prob(x, num_samples=2000, fit_steps=200)
    exact = model.log_prob(x, 4001)
    diff = est.log_px.double() - exact
    assert bool((diff.abs() < 5 * est.stderr.double() + 1e-3).all()), (diff, est.stderr)
    assert float(est.stderr.max()) < 0.1
    if copula:  # not vacuous: ignoring the copula (decoding u directly) is far outside that tolerance
        wrong = LearnedModel(model.decoder, model.likelihood, None).log_prob(x, 4001)
        assert float((wrong - exact).abs().max()) > 1.0


def test_learned_model_with_flow_prior_2d_agrees_with_importance_sampling():
    """A 2-D MAPA model: grid quadrature (exact) and the fitted-proposal IS estimate agree within its SE."""
    import pyro

    from pyro_mapa.datasets import load_dataset
    from pyro_mapa.methods import build_method
    from pyro_mapa.training import fit

    torch.set_num_threads(1)
    pyro.clear_param_store()
    ds = load_dataset("circle", num_train=200, num_valid=5, num_test=40, seed=0)
    setup = build_method("MAPA", ds.train, ds.likelihood, latent_dim=2, hidden=(16,), seed=0)
    fit(setup.model, setup.guide, setup.loss, 200, epochs=10, batch_size=50, lr=1e-2, progress=False)
    learned = setup.learned_model(flow_steps=300)
    exact = learned.log_prob(ds.test[:20], num_points=301)  # 301² nodes: within ~3e-3 of 401²
    est = learned.importance_log_prob(ds.test[:20], num_samples=20000, fit_steps=1500)
    assert torch.isfinite(exact).all()
    diff = (est.log_px.double() - exact).abs()
    assert bool((diff < 4 * est.stderr.double() + 0.02).all()), (diff, est.stderr)
    assert learned.sample(7).shape == (7, 2)


def test_a_decoder_of_another_input_size_is_refused_naming_both_sizes():
    with pytest.raises(ValueError, match="the decoder expects inputs of size 3 but latent_dim is 2"):
        LearnedModel(mlp(3, 2, (4,)), NormalLikelihood(0.1), latent_dim=2)
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        LearnedModel(mlp(1, 2, (4,)), NormalLikelihood(0.1), latent_dim=0)
    assert LearnedModel(mlp(2, 5, (4,)), NormalLikelihood(0.1), latent_dim=2).num_columns == 5


def test_log_prob_refuses_points_of_another_width_and_rows_with_nan():
    torch.manual_seed(0)
    model = LearnedModel(mlp(1, 2, (4,)), NormalLikelihood(0.3))
    with pytest.raises(ValueError, match=r"x has 3 columns, the model 2"):
        model.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"x has 3 columns, the model 2"):
        model.importance_log_prob(torch.randn(5, 3), num_samples=10, fit_steps=1)
    x = torch.randn(5, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or inf in 1 row\(s\) \(first: row 3\)"):
        model.log_prob(x)
    assert torch.isfinite(model.log_prob(x[:3], 401)).all()


def test_normal_likelihood_accepts_a_scale_tensor_of_one_value():
    """A tensor scale (one value, or one equal value per column) is read as that number; unequal values are refused."""
    from pyro_mapa.table.kernels import GaussianKernel

    for sigma in (torch.tensor([0.25, 0.25]), torch.tensor(0.25), torch.tensor([0.25], dtype=torch.float64)):
        lik = NormalLikelihood(sigma)
        assert isinstance(lik.sigma, float) and lik.sigma == 0.25  # 0.25 is exact in float32
        assert isinstance(lik.kernel(), GaussianKernel)
        mean = torch.zeros(2)
        torch.testing.assert_close(lik(mean).log_prob(torch.ones(2)),
                                   torch.distributions.Normal(0.0, 0.25).log_prob(torch.ones(2)).sum())
    with pytest.raises(ValueError, match=r"sigma must be one number, the same noise for every column; got 2 "
                                         r"values, not all equal, \[0.05, 0.1\]"):
        NormalLikelihood(torch.tensor([0.05, 0.1]))
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        NormalLikelihood(torch.tensor([0.0, 0.0]))
