"""FlowPrior and KDEPrior: densities over d-dimensional codes, against known distributions and brute force."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mapa.priors import FlowPrior, KDEPrior, PriorDistribution

F64 = torch.float64

GAUSS_MEAN = torch.tensor([1.0, -2.0], dtype=F64)
GAUSS_COV = torch.tensor([[4.0, 0.8 * 2.0 * 0.9], [0.8 * 2.0 * 0.9, 0.81]], dtype=F64)  # correlation 0.8
GAUSS = torch.distributions.MultivariateNormal(GAUSS_MEAN, covariance_matrix=GAUSS_COV)


def gauss_draws(n, seed):
    g = torch.Generator().manual_seed(seed)
    return GAUSS_MEAN + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(GAUSS_COV).T


def banana_draws(n, seed):
    """z1 ~ N(0, 1), z2 | z1 ~ N((z1^2 - 1) / 2, 1/4)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 2, generator=g, dtype=F64)
    return torch.stack([u[:, 0], 0.5 * (u[:, 0] ** 2 - 1) + 0.5 * u[:, 1]], dim=-1)


def banana_log_prob(z):
    a = z[..., 0]
    b = (z[..., 1] - 0.5 * (a**2 - 1)) / 0.5
    return -0.5 * a**2 - 0.5 * b**2 - math.log(2 * math.pi) - math.log(0.5)


def bimodal_draws(n, seed):
    g = torch.Generator().manual_seed(seed)
    which = torch.rand(n, generator=g) < 0.3
    return torch.where(which, -2.0 + 0.5 * torch.randn(n, generator=g, dtype=F64),
                       1.5 + torch.randn(n, generator=g, dtype=F64)).unsqueeze(-1)


def bimodal_log_prob(z):
    z = z[..., 0]
    a = math.log(0.3) + torch.distributions.Normal(-2.0, 0.5).log_prob(z)
    b = math.log(0.7) + torch.distributions.Normal(1.5, 1.0).log_prob(z)
    return torch.logaddexp(a, b)


def trapezoid_weights(grid):
    h = float(grid[1] - grid[0])
    w = torch.full_like(grid, h)
    w[0] = w[-1] = h / 2
    return w


@pytest.fixture(scope="module")
def gauss_prior():
    codes = gauss_draws(2000, seed=0).float()
    return FlowPrior.fit(codes, steps=200, lr=1e-2, hidden=(32, 32), transforms=2, flow="nsf", seed=0), codes


@pytest.fixture(scope="module")
def banana_prior():
    codes = banana_draws(2000, seed=0).float()
    return FlowPrior.fit(codes, steps=200, lr=1e-2, hidden=(32, 32), transforms=3, flow="maf", seed=0), codes


def test_flow_held_out_log_likelihood_matches_the_truth_for_a_correlated_gaussian(gauss_prior):
    prior, _ = gauss_prior
    test = gauss_draws(4000, seed=1)
    truth = float(GAUSS.log_prob(test).mean())  # about -(entropy) = -2.94 nats
    got = prior.log_prob(test.float())
    assert got.shape == (4000,)
    assert abs(float(got.double().mean()) - truth) < 0.1
    # A standard normal on the raw codes would be far off: the test has power.
    assert float(torch.distributions.Normal(0.0, 1.0).log_prob(test).sum(-1).mean()) < truth - 1


def test_flow_held_out_log_likelihood_matches_the_truth_for_a_banana(banana_prior):
    prior, codes = banana_prior
    test = banana_draws(4000, seed=1)
    truth = float(banana_log_prob(test).mean())
    got = float(prior.log_prob(test.float()).double().mean())
    assert abs(got - truth) < 0.1
    # The best Gaussian fit is more than 0.3 nats worse: the flow captured the curvature.
    c = codes.double()
    gauss = torch.distributions.MultivariateNormal(c.mean(0), covariance_matrix=torch.cov(c.T))
    assert float(gauss.log_prob(test).mean()) < truth - 0.3
    assert got > float(gauss.log_prob(test).mean()) + 0.2


def test_flow_density_integrates_to_one(gauss_prior):
    prior, _ = gauss_prior
    # +-7 standard deviations around the mean, trapezoid rule.
    g1 = torch.linspace(1.0 - 14.0, 1.0 + 14.0, 281, dtype=F64)
    g2 = torch.linspace(-2.0 - 6.3, -2.0 + 6.3, 281, dtype=F64)
    zz = torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1)
    dens = prior.log_prob(zz.float()).double().exp()
    assert dens.shape == (281, 281)
    mass = float(trapezoid_weights(g1) @ dens @ trapezoid_weights(g2))
    assert mass == pytest.approx(1.0, abs=2e-2)


def test_flow_samples_match_the_moments(gauss_prior):
    prior, _ = gauss_prior
    z = prior.sample(torch.Size([20000]), generator=torch.Generator().manual_seed(0)).double()
    assert z.shape == (20000, 2)
    torch.testing.assert_close(z.mean(0), GAUSS_MEAN, rtol=0, atol=0.1)
    torch.testing.assert_close(torch.cov(z.T), GAUSS_COV, rtol=0.1, atol=0.05)
    corr = torch.corrcoef(z.T)[0, 1]
    assert float(corr) == pytest.approx(0.8, abs=0.03)


def test_flow_one_dimensional_codes():
    codes = bimodal_draws(1500, seed=0)
    prior = FlowPrior.fit(codes, steps=300, lr=2e-2, hidden=(16,), transforms=3, seed=0)
    assert prior.dim == 1
    test = bimodal_draws(4000, seed=1)
    lp = prior.log_prob(test)
    assert lp.shape == (4000,) and lp.dtype == F64
    assert abs(float(lp.mean()) - float(bimodal_log_prob(test).mean())) < 0.1
    grid = torch.linspace(-9.0, 10.0, 3801, dtype=F64)
    mass = float((trapezoid_weights(grid) * prior.log_prob(grid.unsqueeze(-1)).exp()).sum())
    assert mass == pytest.approx(1.0, abs=2e-2)
    # Bimodal: the density dips between the modes (a Gaussian fit would peak there).
    at = prior.log_prob(torch.tensor([[-2.0], [-0.6], [1.5]], dtype=F64)).exp()
    assert float(at[1]) < 0.75 * float(at[0]) and float(at[1]) < 0.75 * float(at[2])


def test_standardization_log_det_is_exact():
    codes = banana_draws(600, seed=3)
    a = FlowPrior.fit(codes, steps=40, lr=1e-2, hidden=(16,), transforms=2, flow="maf", seed=5)
    b = FlowPrior.fit(100.0 * codes, steps=40, lr=1e-2, hidden=(16,), transforms=2, flow="maf", seed=5)
    torch.testing.assert_close(b.loc, 100.0 * a.loc)
    torch.testing.assert_close(b.scale, 100.0 * a.scale)
    z = banana_draws(50, seed=4)
    # Same standardized codes and seed, so the same flow: densities differ by log(100^d) exactly.
    torch.testing.assert_close(b.log_prob(100.0 * z), a.log_prob(z) - 2 * math.log(100.0), rtol=0, atol=1e-8)
    gen = lambda: torch.Generator().manual_seed(0)
    torch.testing.assert_close(b.sample((7,), gen()), 100.0 * a.sample((7,), gen()), rtol=1e-9, atol=1e-9)
    # The log-det is really there: without it the two would agree instead.
    assert float((b.log_prob(100.0 * z) - a.log_prob(z)).abs().min()) > 9.0


def test_early_stopping_keeps_the_best_held_out_state():
    # Few codes, big steps: the held-out loss turns up, training stops, the best state is restored.
    codes = gauss_draws(60, seed=2)
    prior = FlowPrior.fit(
        codes, steps=400, lr=3e-2, hidden=(32, 32), transforms=3, eval_every=5, patience=4, seed=1
    )
    h = prior.history
    assert len(h["step"]) == len(h["train"]) == len(h["val"])
    assert h["step"][-1] < 400, "stopped early"
    best = min(range(len(h["val"])), key=h["val"].__getitem__)
    assert prior.best_step == h["step"][best]
    assert len(h["val"]) - 1 - best == 4, "stopped after `patience` evaluations without improvement"
    assert prior.val_index.shape == (6,)  # 10% of 60
    held_out = codes[prior.val_index]
    assert float(-prior.log_prob(held_out).mean()) == pytest.approx(h["val"][best], abs=1e-9)
    # The kept state is not the last one trained.
    assert h["val"][-1] > h["val"][best]


def test_fit_is_seeded_and_leaves_the_global_rng_alone():
    codes = gauss_draws(200, seed=5)
    state = torch.get_rng_state()
    a = FlowPrior.fit(codes, steps=20, hidden=(8,), transforms=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = FlowPrior.fit(codes, steps=20, hidden=(8,), transforms=1, seed=3)
    c = FlowPrior.fit(codes, steps=20, hidden=(8,), transforms=1, seed=4)
    z = gauss_draws(10, seed=6)
    assert torch.equal(a.log_prob(z), b.log_prob(z))
    assert not torch.equal(a.log_prob(z), c.log_prob(z))
    assert not any(p.requires_grad for p in a.parameters())
    assert not a.training


def test_minibatch_training_and_no_validation_split():
    codes = gauss_draws(300, seed=7)
    prior = FlowPrior.fit(codes, steps=30, hidden=(8,), transforms=1, batch_size=64, val_fraction=0.0,
                          eval_every=10, seed=0)
    assert prior.history["step"] == [10, 20, 30]
    assert prior.history["val"] == []
    assert prior.best_step == 30
    assert prior.val_index.numel() == 0
    # Standardization over all codes when nothing is held out.
    torch.testing.assert_close(prior.loc, codes.mean(0))
    torch.testing.assert_close(prior.scale, codes.std(0))


def test_sample_generator_and_global_rng(gauss_prior):
    prior, _ = gauss_prior
    a = prior.sample((3, 4), generator=torch.Generator().manual_seed(1))
    b = prior.sample((3, 4), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 4, 2) and torch.equal(a, b)
    torch.manual_seed(5)
    c = prior.sample((6,))
    torch.manual_seed(5)
    assert torch.equal(c, prior.sample((6,)))
    assert prior.sample().shape == (2,)


def test_flow_distribution_in_a_pyro_model_under_a_plate(gauss_prior):
    prior, _ = gauss_prior
    d = prior.distribution()
    assert isinstance(d, PriorDistribution)
    assert d.batch_shape == () and d.event_shape == (2,)
    assert d.has_rsample

    def model(n):
        with pyro.plate("data", n):
            return pyro.sample("z", prior.distribution())

    trace = poutine.trace(model).get_trace(7)
    site = trace.nodes["z"]
    assert site["value"].shape == (7, 2)
    assert site["fn"].batch_shape == (7,)
    trace.compute_log_prob()
    torch.testing.assert_close(site["log_prob"], prior.log_prob(site["value"]))
    # Conditioning on data: the site's log-density is the prior's.
    z = gauss_draws(7, seed=9).float()
    cond = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(7)
    torch.testing.assert_close(cond.log_prob_sum(), prior.log_prob(z).sum())
    # A single event broadcasts against the batch shape.
    assert d.expand([5]).log_prob(torch.zeros(2)).shape == (5,)
    # With validation on (conftest), a wrong event size is rejected.
    with pytest.raises(ValueError, match="must match event_shape"):
        d.expand([5]).log_prob(torch.zeros(5, 3))


def test_flow_distribution_works_with_svi():
    codes = gauss_draws(200, seed=8).float()
    prior = FlowPrior.fit(codes, steps=20, hidden=(8,), transforms=1, seed=0)
    x = torch.randn(6, 2)

    def model():
        with pyro.plate("data", 6):
            z = pyro.sample("z", prior.distribution())
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide():
        loc = pyro.param("loc", torch.zeros(6, 2))
        with pyro.plate("data", 6):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    losses = [svi.step() for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    # The prior's parameters are frozen and not registered: only the guide's "loc" is learned.
    assert list(pyro.get_param_store().keys()) == ["loc"]


def brute_force_kde(codes, z, kernel_cov):
    out = []
    for zq in z:
        terms = [
            float(torch.distributions.MultivariateNormal(ci, covariance_matrix=kernel_cov).log_prob(zq))
            for ci in codes
        ]
        m = max(terms)
        out.append(m + math.log(sum(math.exp(t - m) for t in terms) / len(codes)))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("bandwidth", [None, "scott", "silverman", 0.7])
def test_kde_log_prob_matches_brute_force(bandwidth):
    codes = banana_draws(30, seed=10)
    n, d = codes.shape
    kde = KDEPrior(codes, bandwidth)
    scott, silverman = n ** (-1 / (d + 4)), (n * (d + 2) / 4) ** (-1 / (d + 4))
    factor = {None: scott, "scott": scott, "silverman": silverman, 0.7: 0.7}[bandwidth]
    assert kde.factor == pytest.approx(factor, rel=1e-12)
    centred = codes - codes.mean(0)
    kernel_cov = factor**2 * centred.T @ centred / (n - 1)
    torch.testing.assert_close(kde.kernel_cov, kernel_cov, rtol=1e-12, atol=0)
    z = banana_draws(12, seed=11) * 1.5
    ref = brute_force_kde(codes, z, kernel_cov)
    torch.testing.assert_close(kde.log_prob(z), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(kde.log_prob(z, chunk_size=5), ref, rtol=0, atol=1e-10)
    assert kde.log_prob(z.reshape(3, 4, 2)).shape == (3, 4)


def test_kde_one_dimensional_integrates_to_one_and_samples_match_moments():
    codes = bimodal_draws(400, seed=12)
    kde = KDEPrior(codes)
    grid = torch.linspace(-8.0, 9.0, 3401, dtype=F64)
    mass = float((trapezoid_weights(grid) * kde.log_prob(grid.unsqueeze(-1)).exp()).sum())
    assert mass == pytest.approx(1.0, abs=1e-6)
    z = kde.sample((40000,), generator=torch.Generator().manual_seed(0))
    assert z.shape == (40000, 1)
    # A KDE draw is a random code plus kernel noise: mean = code mean, var = biased code var + H.
    assert float(z.mean()) == pytest.approx(float(codes.mean()), abs=0.03)
    var = float(codes.var(unbiased=False)) + float(kde.kernel_cov)
    assert float(z.var()) == pytest.approx(var, rel=0.03)


def test_kde_two_dimensional_sample_covariance():
    codes = gauss_draws(300, seed=13)
    kde = KDEPrior(codes)
    z = kde.sample((50000,), generator=torch.Generator().manual_seed(1))
    centred = codes - codes.mean(0)
    cov = centred.T @ centred / 300 + kde.kernel_cov
    torch.testing.assert_close(torch.cov(z.T), cov, rtol=0.04, atol=0.02)
    d = kde.distribution()
    assert not d.has_rsample
    assert d.expand([4]).sample().shape == (4, 2)
    with pytest.raises(TypeError, match="no reparameterized sampler"):
        d.rsample()


def test_kde_and_flow_agree_on_a_gaussian(gauss_prior):
    # Two estimators of the same density: close on held-out points.
    prior, codes = gauss_prior
    kde = KDEPrior(codes.double())
    test = gauss_draws(2000, seed=14)
    assert abs(float(kde.log_prob(test).mean()) - float(prior.log_prob(test.float()).double().mean())) < 0.15


def _nan_codes():
    c = gauss_draws(50, seed=0)
    c[3, 1] = math.nan
    return c


@pytest.mark.parametrize(
    "codes, kwargs, match",
    [
        (_nan_codes(), {}, "NaN"),
        (gauss_draws(50, seed=0)[:, 0], {}, r"\(N, d\)"),
        (gauss_draws(50, seed=0).reshape(5, 10, 2), {}, r"\(N, d\)"),
        (gauss_draws(9, seed=0), {}, "at least 10"),
        ([[0.0, 1.0]] * 20, {}, "codes"),
        (torch.cat([gauss_draws(50, seed=0)[:, :1], torch.ones(50, 1, dtype=F64)], 1), {}, "zero spread"),
        (gauss_draws(50, seed=0), {"flow": "realnvp"}, "flow"),
        (gauss_draws(50, seed=0), {"val_fraction": 1.0}, "val_fraction"),
        (gauss_draws(50, seed=0), {"steps": 0}, "steps"),
        (gauss_draws(50, seed=0), {"lr": -1.0}, "lr"),
        (gauss_draws(50, seed=0), {"transforms": 0}, "transforms"),
        (gauss_draws(50, seed=0), {"patience": 0}, "patience"),
        (gauss_draws(50, seed=0), {"batch_size": 0}, "batch_size"),
        (gauss_draws(50, seed=0), {"hidden": (0,)}, "hidden"),
    ],
)
def test_flow_fit_bad_inputs_raise(codes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowPrior.fit(codes, steps=kwargs.pop("steps", 1), **kwargs)


@pytest.mark.parametrize(
    "codes, bandwidth, match",
    [
        (_nan_codes(), None, "NaN"),
        (gauss_draws(50, seed=0)[:, 0], None, r"\(N, d\)"),
        (gauss_draws(1, seed=0), None, "at least 2"),
        (torch.stack([torch.arange(20.0), 2 * torch.arange(20.0)], 1), None, "singular"),
        (gauss_draws(50, seed=0), -1.0, "bandwidth"),
        (gauss_draws(50, seed=0), "wide", "bandwidth"),
        (gauss_draws(50, seed=0), True, "bandwidth"),
    ],
)
def test_kde_bad_inputs_raise(codes, bandwidth, match):
    with pytest.raises(ValueError, match=match):
        KDEPrior(codes, bandwidth)


def test_log_prob_wrong_latent_size_raises(gauss_prior):
    prior, codes = gauss_prior
    with pytest.raises(ValueError, match="z"):
        prior.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="z"):
        KDEPrior(codes).log_prob(torch.zeros(4, 1))
