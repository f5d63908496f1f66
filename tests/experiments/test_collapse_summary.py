"""The per-job collapse numbers of `pyro-mapa reproduce` against independent estimates."""

import math

import pyro
import pytest
import torch

from pyro_mapa.evaluation.latent_posterior import grid_log_marginal
from pyro_mapa_experiments.collapse_summary import collapse_summary
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method


@pytest.fixture(scope="module")
def data():
    return load_dataset("circle", 60, 30, 30, seed=0)


def test_guide_posterior_kl_is_the_gap_between_log_likelihood_and_elbo(data):
    """E_x KL(q(z|x) || p(z|x)) by quadrature equals E_x[log p(x) - ELBO(x)], the ELBO by Monte Carlo."""
    pyro.clear_param_store()
    setup = build_method("VAE", data.train, data.likelihood, hidden=(8,), seed=0)
    setup.train(len(data.train), epochs=3, batch_size=20, lr=1e-2, seed=0)
    learned = setup.learned_model()
    x = data.test
    summary = collapse_summary(setup, learned, x)
    with torch.no_grad():
        log_px = grid_log_marginal(x, learned.decode, learned.likelihood, latent_dim=1).double()
        q = setup.guide.distribution(x)
        z = q.sample(torch.Size([20000]))  # (M, n, 1)
        log_w = (learned.likelihood(learned.decode(z)).log_prob(x).double()
                 + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1).double() - q.log_prob(z).double())
    gap = log_px - log_w  # (M, n): per draw, mean over draws is log p(x) - ELBO(x)
    per_draw = gap.mean(1)
    se = float(per_draw.std() / math.sqrt(len(per_draw)))
    assert summary["guide_posterior_kl"] > 0.05  # a 3-epoch encoder is far from the posterior
    assert abs(summary["guide_posterior_kl"] - float(per_draw.mean())) < 4 * se + 2e-3, (summary, se)


def test_free_codes_report_the_model_collapse_only(data):
    pyro.clear_param_store()
    setup = build_method("MAPA-free", data.train, data.likelihood, hidden=(8,), seed=0)
    setup.train(len(data.train), epochs=2, batch_size=20, lr=1e-2, seed=0)
    summary = collapse_summary(setup, setup.learned_model(), data.test)
    # No encoder and no guide network: neither active units nor q's numbers, the model's collapse KL only.
    assert set(summary) == {"model_collapse_kl"} and summary["model_collapse_kl"] > 0.1


def test_guide_posterior_kl_by_monte_carlo_agrees_with_the_grid_and_covers_narrow_guides(data):
    from pyro_mapa.evaluation.latent_posterior import GridMassError, grid_log_marginal
    from pyro_mapa_experiments.collapse_summary import guide_posterior_kl
    from pyro_mapa.models import MeanFieldGuide

    pyro.clear_param_store()
    setup = build_method("VAE", data.train, data.likelihood, hidden=(8,), seed=0)
    setup.train(len(data.train), epochs=20, batch_size=20, lr=1e-2, seed=0)
    learned, x = setup.learned_model(), data.test
    grid, grid_se = guide_posterior_kl(setup.guide, learned, x, method="grid")
    mc, se = guide_posterior_kl(setup.guide, learned, x, num_samples=4000, method="monte_carlo")
    assert grid_se == 0 and 0 < se < 0.05 and abs(mc - grid) < 4 * se + 1e-3, (grid, mc, se)

    # A guide 1e-4 wide at z0 = 0.3 for every point: the grid cannot hold it, Monte Carlo can.
    # KL(q || p(z|x)) = -H(q) - E_q log p(z|x) = -H(q) - [log p(x|z0) + log N(z0) - log p(x)] + O(width^2).
    class Narrow(torch.nn.Module):
        def forward(self, x):
            loc = torch.full((len(x), 1), 0.3)
            return torch.cat([loc, torch.full_like(loc, -9.21)], -1)  # softplus(-9.21) + 1e-5 ≈ 1.1e-4

    narrow = MeanFieldGuide(Narrow(), data.train, 1)
    with pytest.raises(GridMassError):
        guide_posterior_kl(narrow, learned, x, method="grid")
    kl, se = guide_posterior_kl(narrow, learned, x, num_samples=200)
    with torch.no_grad():
        q = narrow.distribution(x)
        z0 = torch.full((1, 1), 0.3)
        log_joint = (learned.likelihood(learned.decode(z0)).log_prob(x)
                     + torch.distributions.Normal(0.0, 1.0).log_prob(z0).sum())
        log_px = grid_log_marginal(x, learned.decode, learned.likelihood, latent_dim=1)
        expected = float((-q.entropy() - log_joint.double() + log_px.double()).mean())
    assert se > 0 and abs(kl - expected) < 4 * se + 1e-3, (kl, expected, se)
    with pytest.raises(ValueError, match="method must be"):
        guide_posterior_kl(narrow, learned, x, method="quadrature")
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        guide_posterior_kl(narrow, learned, x, num_samples=1)
