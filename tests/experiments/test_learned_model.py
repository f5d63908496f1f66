"""LearnedModel: its importance-sampled log-likelihood agrees with the exact one, for every kind of prior."""

import pytest
import torch

from pyro_mapa import NormalLikelihood, mlp
from pyro_mapa.experiments.learned_model import LearnedModel
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
