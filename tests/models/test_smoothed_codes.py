"""Smoothed codes (MAPA with code-location entropy): unbiased inside the bound, exact priors, a proposal that works."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_mapa import (
    AmortizedCodebook,
    EmpiricalizedModel,
    GaussianKernel,
    MAPAGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceMAPA_ELBO,
    mlp,
)
from pyro_mapa.diagnostics import importance_diagnostics
from pyro_mapa.evaluation import CodeMixtureProposal
from pyro_mapa.methods import build_method
from pyro_mapa.priors import CodeMixturePrior

F64 = torch.float64


def tiny(tau, seed=0, n=5, sigma=0.3):
    torch.manual_seed(seed)
    x = torch.randn(n, 2, dtype=F64)
    decoder = torch.nn.Linear(1, 2).double()
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[3.0], [-2.0]]))  # steep: the smoothing matters
    cb = AmortizedCodebook(torch.nn.Linear(2, 1).double(), decoder, x, tau=tau)
    model = EmpiricalizedModel(cb, NormalLikelihood(sigma))
    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), site="c")
    return x, cb, model, guide


def test_tau_zero_is_todays_codebook_bit_for_bit():
    x, cb0, model0, guide = tiny(0.0)
    cb = AmortizedCodebook(torch.nn.Linear(2, 1).double(), torch.nn.Linear(1, 2).double(), x)
    cb.load_state_dict(cb0.state_dict())
    idx = torch.tensor([[0, 3, 3], [1, 1, 4]])
    assert torch.equal(cb0(idx), cb(idx))
    assert cb0.decoder_passes == 4  # unique indices only: {0, 1, 3, 4}
    rows = torch.arange(5)
    elbo = TraceMAPA_ELBO(num_top=2, num_samples=2, rng_seed=3)
    a = elbo.loss(model0, guide, rows)
    b = TraceMAPA_ELBO(num_top=2, num_samples=2, rng_seed=3).loss(EmpiricalizedModel(cb, NormalLikelihood(0.3)), guide, rows)
    assert a == b


def exact_smoothed_loglik(cb, x, sigma):
    """log (1/N) sum_c int N(z; z_c, s^2) N(x_n; f(z), sigma^2 I) dz, by the trapezoid rule (float64)."""
    with torch.no_grad():
        codes = cb.codes()[:, 0]
        s = float(cb.smoothing_scale()[0])
        z = torch.linspace(float(codes.min()) - 10 * s, float(codes.max()) + 10 * s, 20001, dtype=F64)
        h = float(z[1] - z[0])
        ll = dist.Normal(cb.decoder(z.unsqueeze(-1)), sigma).log_prob(x.unsqueeze(1)).sum(-1)  # (n, G)
        prior = dist.Normal(codes.unsqueeze(-1), s).log_prob(z).logsumexp(0) - math.log(len(codes))  # (G,)
    return torch.logsumexp(ll + prior + math.log(h), -1)


def test_estimate_inside_the_log_is_unbiased_and_the_bound_holds():
    """At K = N, exp(L_n) is unbiased for the smoothed model's p(x_n), and E[L_n] <= log p(x_n)."""
    x, cb, model, guide = tiny(0.8)
    elbo = TraceMAPA_ELBO(num_top=5)
    n = 2
    elbo.loss(model, guide, torch.tensor([n]))  # sets code_scale (constant afterwards: same codes)
    pyro.set_rng_seed(0)
    draws = torch.tensor([-elbo.loss(model, guide, torch.tensor([n])) / 5 for _ in range(3000)], dtype=F64)
    exact = float(exact_smoothed_loglik(cb, x, 0.3)[n])
    w = (draws - exact).exp()  # p-hat / p: mean 1 if unbiased
    assert abs(float(w.mean()) - 1) < 4 * float(w.std()) / math.sqrt(len(w))
    assert float(draws.mean()) < exact
    assert float(w.std()) > 0.05  # the smoothing is really there (a deterministic estimate would be exact)


def test_code_mixture_prior_is_the_closed_form_mixture():
    codes = torch.randn(7, 2, dtype=F64)
    scale = torch.tensor([0.3, 0.6], dtype=F64)
    prior = CodeMixturePrior(codes, scale)
    mix = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(7, dtype=F64)), dist.Normal(codes, scale).to_event(1)
    )
    z = torch.randn(4, 3, 2, dtype=F64)
    assert torch.allclose(prior.log_prob(z), mix.log_prob(z), atol=1e-12)
    zz = torch.randn(5, 2, dtype=F64, requires_grad=True)
    (g1,) = torch.autograd.grad(prior.log_prob(zz).sum(), zz)
    (g2,) = torch.autograd.grad(mix.log_prob(zz).sum(), zz)
    assert torch.allclose(g1, g2, atol=1e-10)
    assert prior.sample((11,)).shape == (11, 2)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), torch.tensor([0.1, 0.2, 0.3])])
def test_code_mixture_prior_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        CodeMixturePrior(torch.randn(5, 2), scale)


@pytest.mark.parametrize("tau", [-0.1, float("inf"), "0.5", True])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        AmortizedCodebook(mlp(2, 1), mlp(1, 2), torch.randn(5, 2), tau=tau)


@pytest.mark.parametrize("name", ["MAPA-naive", "MAPA-free", "IWAE"])
def test_tau_refused_where_undefined(name):
    with pytest.raises(ValueError, match="tau .* is defined for MAPA only"):
        build_method(name, torch.randn(20, 2), NormalLikelihood(0.1), options={"tau": 0.5})


def test_smoothed_model_evaluated_by_the_code_proposal_agrees_with_the_exact_grid():
    torch.manual_seed(0)
    t = torch.rand(300) * 2 * math.pi
    x = torch.stack([t.cos(), t.sin()], -1) + 0.1 * torch.randn(300, 2)
    lik = NormalLikelihood(0.1)
    setup = build_method("MAPA", x, lik, latent_dim=2, hidden=(20, 20), options={"tau": 0.5})
    setup.train(len(x), epochs=3, batch_size=100, lr=3e-3, seed=0, progress=False)
    learned = setup.learned_model()
    assert isinstance(learned.prior, CodeMixturePrior)
    x_test = x[:25] + 0.05 * torch.randn(25, 2)
    exact = learned.log_prob(x_test)
    codes = setup.model.codebook.codes().detach()
    scale = setup.model.codebook.smoothing_scale()
    by_likelihood = lambda xb, z: lik(setup.decoder(z)).log_prob(xb)  # noqa: E731
    for proposal in (
        CodeMixtureProposal(x, codes, scale, lik.kernel(), widen=1.5),
        CodeMixtureProposal(x, codes, scale, lik.kernel(), num_components=50, log_likelihood=by_likelihood),
    ):
        est = learned.importance_log_prob(x_test, num_samples=2000, proposal=proposal)
        assert bool(((est.log_px.double() - exact).abs() < 4 * est.stderr.double() + 2e-3).all())
        assert float(torch.as_tensor(importance_diagnostics(est.log_weights).pareto_k).median()) < 0.7


def test_code_proposal_bad_arguments():
    x, codes = torch.randn(10, 2), torch.randn(10, 1)
    k = GaussianKernel(0.5)
    with pytest.raises(ValueError, match="num_components"):
        CodeMixtureProposal(x, codes, 0.1, k, num_components=11)
    with pytest.raises(ValueError, match="defensive"):
        CodeMixtureProposal(x, codes, 0.1, k, num_components=5, defensive=0.0)
    with pytest.raises(ValueError, match="widen"):
        CodeMixtureProposal(x, codes, 0.1, k, num_components=5, widen=0.0)
    with pytest.raises(ValueError, match="one row per training point"):
        CodeMixtureProposal(x, codes[:5], 0.1, k, num_components=5)
    bad = codes.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="codes contains NaN"):
        CodeMixtureProposal(x, bad, 0.1, k, num_components=5)
