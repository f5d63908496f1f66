"""TraceInfoVAE_ELBO against exact answers: Trace_ELBO, an independent re-computation, closed-form MMD."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_mapa import MeanFieldGuide, NonFiniteLossError, NormalLikelihood, VAEModel, mlp
from pyro_mapa.infer.infovae_elbo import TraceInfoVAE_ELBO, imq_kernel, mmd_u_statistic, rbf_kernel


def make_vae(n=20, d_obs=3, d=2, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_obs, generator=g)
    torch.manual_seed(seed)
    model = VAEModel(mlp(d, d_obs, (8,)), x, d, NormalLikelihood(sigma))
    guide = MeanFieldGuide(mlp(d_obs, 2 * d, (8,)), x, d)
    return model, guide, x


def _k_pair(kernel, h):
    """k(a, b) for one pair of code vectors, written out independently of the module (differentiable)."""
    if kernel == "rbf":
        return lambda a, b: torch.exp(-((a - b) ** 2).sum() / (2 * h * h))
    return lambda a, b: 2 * a.numel() * h * h / (2 * a.numel() * h * h + ((a - b) ** 2).sum())


def _mmd_loops(a, b, kernel, h):
    """MMD²_u of the rows of ``a`` and ``b`` by explicit sums over pairs."""
    k, n, m = _k_pair(kernel, h), len(a), len(b)
    kxx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("subsample", [False, True])
def test_alpha0_lambda1_is_trace_elbo(subsample, num_particles):
    model, guide, _ = make_vae()
    idx = torch.tensor([3, 7, 1, 12, 19, 0]) if subsample else None
    ours = TraceInfoVAE_ELBO(0.0, 1.0, num_particles=num_particles)
    ref = Trace_ELBO(num_particles=num_particles)
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        a = ours.loss(model, guide, idx)
        pyro.set_rng_seed(seed)
        b = ref.loss(model, guide, idx)
        assert a == pytest.approx(b, rel=1e-5)
    params = list(model.decoder.parameters()) + list(guide.encoder.parameters())
    pyro.set_rng_seed(5)
    a = ours.differentiable_loss(model, guide, idx)
    ga = torch.autograd.grad(a, params)
    pyro.set_rng_seed(5)
    b = ref.differentiable_loss(model, guide, idx)
    gb = torch.autograd.grad(b, params)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "alpha, lambda_, kernel, m",
    [(1.0, 1.0, "rbf", None), (0.5, 3.0, "imq", None), (-0.5, 4.0, "imq", 13), (1.0, 0.5, "rbf", 4)],
)
def test_matches_independent_computation(alpha, lambda_, kernel, m):
    n, d, h = 20, 2, 0.7
    model, guide, x = make_vae(n=n, d=d)
    idx = torch.tensor([3, 7, 1, 12, 19, 0])
    b = len(idx)
    elbo = TraceInfoVAE_ELBO(alpha, lambda_, kernel=kernel, bandwidth=h, num_prior_samples=m)
    params = list(model.decoder.parameters()) + list(guide.encoder.parameters())
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, idx)
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(3)
    q = guide.distribution(x[idx])
    z = q.rsample()
    draws = math.ceil((m or b) / b)
    prior = dist.Normal(torch.zeros(draws, b, d), 1.0).sample().reshape(-1, d)[: (m or b)]
    log_lik = NormalLikelihood(0.5)(model.decoder(z)).log_prob(x[idx]).sum()
    kl = (q.log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z).sum(-1)).sum()
    mmd = _mmd_loops(z, prior, kernel, h)
    expected = (n / b) * (-log_lik + (1 - alpha) * kl) + n * (alpha + lambda_ - 1) * mmd
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for u, v in zip(grads, torch.autograd.grad(expected, params)):  # the codes carry the MMD gradient
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_user_model_other_prior_plate_dim_and_names():
    """A latent 'h' in plate 'obs' at dim -2 with a N(2, 0.5²) prior; codes (B, 3)."""
    n, b, alpha, lambda_, h = 15, 5, 1.0, 2.0, 1.3
    data = torch.randn(n, 1, 3, generator=torch.Generator().manual_seed(1))
    w = torch.tensor(0.8)
    loc = torch.zeros(n, 1, 3, requires_grad=True)

    def model(idx):
        with pyro.plate("obs", n, dim=-2, subsample=idx) as i:
            z = pyro.sample("h", dist.Normal(2.0, 0.5).expand([1, 3]).to_event(1))
            pyro.sample("y", dist.Normal(w * z, 1.0).to_event(1), obs=data[i])

    def guide(idx):
        with pyro.plate("obs", n, dim=-2, subsample=idx) as i:
            pyro.sample("h", dist.Normal(loc[i], 0.3).to_event(1))

    idx = torch.tensor([0, 4, 9, 2, 14])
    elbo = TraceInfoVAE_ELBO(alpha, lambda_, kernel="rbf", bandwidth=h)
    pyro.set_rng_seed(4)
    loss = elbo.loss(model, guide, idx)
    pyro.set_rng_seed(4)
    q = dist.Normal(loc[idx], 0.3).to_event(1)
    z = q.rsample().detach()
    prior = dist.Normal(2.0, 0.5).expand([1, b, 1, 3]).sample().reshape(b, 3)
    p = dist.Normal(2.0, 0.5).expand([3]).to_event(1)
    lik = dist.Normal(w * z, 1.0).to_event(1).log_prob(data[idx]).sum()
    kl = (q.log_prob(z) - p.log_prob(z)).sum()
    expected = (n / b) * (-lik + (1 - alpha) * kl) + n * (alpha + lambda_ - 1) * _mmd_loops(
        z.reshape(b, 3), prior, "rbf", h
    )
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)


def _ek_rbf(a, s, b, t, h):
    v = h * h + s * s + t * t
    return h / math.sqrt(v) * math.exp(-((a - b) ** 2) / (2 * v))


def test_mmd_u_mean_matches_rbf_closed_form():
    a, s, b, t, h, n, m, reps = 0.0, 0.5, 1.0, 1.0, 1.0, 16, 12, 4000
    g = torch.Generator().manual_seed(11)
    x = a + s * torch.randn(reps, n, 1, generator=g, dtype=torch.float64)
    y = b + t * torch.randn(reps, m, 1, generator=g, dtype=torch.float64)
    est = mmd_u_statistic(x, y, "rbf", h)
    exact = _ek_rbf(a, s, a, s, h) + _ek_rbf(b, t, b, t, h) - 2 * _ek_rbf(a, s, b, t, h)
    mean, se = float(est.mean()), float(est.std() / math.sqrt(reps))
    assert se < 0.02 * exact  # the V-statistic's bias here is 0.047, 14 % of exact = 0.326
    assert abs(mean - exact) < 4 * se
    # one draw against the explicit pair sums
    assert float(est[0]) == pytest.approx(float(_mmd_loops(x[0], y[0], "rbf", h)), rel=1e-10)


def test_mmd_u_is_unbiased_zero_for_equal_distributions_imq():
    n, reps, d, h = 16, 4000, 2, 1.0
    g = torch.Generator().manual_seed(12)
    x = torch.randn(reps, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(reps, n, d, generator=g, dtype=torch.float64)
    est = mmd_u_statistic(x, y, "imq", h)
    mean, se = float(est.mean()), float(est.std() / math.sqrt(reps))
    assert se < 0.002  # the V-statistic's bias here is (2/n)(1 - E k) = 0.05
    assert abs(mean) < 4 * se
    assert float(est[0]) == pytest.approx(float(_mmd_loops(x[0], y[0], "imq", h)), rel=1e-10)


def test_kernels_match_formulas():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 2.0]])
    for i in range(2):
        for j in range(3):
            assert float(rbf_kernel(x, y, 0.8)[i, j]) == pytest.approx(float(_k_pair("rbf", 0.8)(x[i], y[j])))
            assert float(imq_kernel(x, y, 0.8)[i, j]) == pytest.approx(float(_k_pair("imq", 0.8)(x[i], y[j])))


def test_expected_loss_per_point_does_not_depend_on_batch_size():
    """E[loss] / N is the same at B = 8 and B = 32; a missing N scaling would shift it by ~5 per point."""
    n, d_obs = 64, 2
    x = torch.randn(n, d_obs, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(2)
    encoder = mlp(d_obs, 2, (4,))
    with torch.no_grad():  # codes near 4 with scale ~0.1: far from the N(0, 1) prior
        encoder[-1].bias.copy_(torch.tensor([4.0, -2.3]))
    model = VAEModel(mlp(1, d_obs, (4,)), x, 1, NormalLikelihood(1.0))
    guide = MeanFieldGuide(encoder, x, 1)
    elbo = TraceInfoVAE_ELBO(0.0, 10.0, kernel="rbf", bandwidth=1.0)
    reps = 400
    stats = {}
    for b in (8, 32):
        vals = torch.tensor([elbo.loss(model, guide, torch.randperm(n)[:b]) / n for _ in range(reps)])
        stats[b] = (float(vals.mean()), float(vals.std() / math.sqrt(reps)))
    (m8, se8), (m32, se32) = stats[8], stats[32]
    se = math.hypot(se8, se32)
    assert se < 0.1  # the effect of using B instead of N is 24 * 9 * MMD^2 / 64 ~ 5 per point
    assert abs(m8 - m32) < 4 * se


def test_loss_and_grads_equal_autograd_of_differentiable_loss():
    model, guide, _ = make_vae()
    idx = torch.tensor([2, 5, 8, 11, 17])
    elbo = TraceInfoVAE_ELBO(0.5, 5.0, kernel="imq", bandwidth=0.9)
    params = list(model.decoder.parameters()) + list(guide.encoder.parameters())
    pyro.set_rng_seed(8)
    value = elbo.loss_and_grads(model, guide, idx)
    grads = [p.grad.clone() for p in params]
    pyro.set_rng_seed(8)
    loss = elbo.differentiable_loss(model, guide, idx)
    expected = torch.autograd.grad(loss, params)
    assert value == pytest.approx(float(loss.detach()), rel=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    for u, v in zip(grads, expected):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)


def test_svi_decreases_the_loss():
    model, guide, _ = make_vae(n=16, d_obs=2, d=1, sigma=0.5, seed=3)
    elbo = TraceInfoVAE_ELBO(0.5, 10.0)
    svi = SVI(model, guide, Adam({"lr": 0.02}), elbo)

    def mean_loss():
        return sum(elbo.loss(model, guide) for _ in range(20)) / 20

    before = mean_loss()
    for _ in range(150):
        svi.step(torch.randperm(16)[:8])
    after = mean_loss()
    assert after < before - 0.1 * abs(before)


def test_non_finite_loss_raises():
    model, guide, _ = make_vae()
    bad = TraceInfoVAE_ELBO(
        1.0, 1.0, kernel=lambda x, y, h: torch.full(x.shape[:-1] + y.shape[-2:-1], math.nan)
    )
    with pytest.raises(NonFiniteLossError, match="MMD"):
        bad.loss(model, guide)

    def model_inf():
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1e-30), obs=torch.full((4,), 5.0))

    def guide_n():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(NonFiniteLossError, match="reconstruction"):
        TraceInfoVAE_ELBO(1.0, 1.0).loss(model_inf, guide_n)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lambda_": -0.1}, ValueError, "lambda_ must be > 0"),
        ({"lambda_": 0.0}, ValueError, "lambda_ must be > 0"),
        ({"alpha": 2.0, "lambda_": 0.0}, ValueError, "alpha must be <= 1"),
        ({"alpha": 1.0 + 1e-9}, ValueError, "alpha must be <= 1"),
        ({"bandwidth": 0.0}, ValueError, "bandwidth must be a positive finite"),
        ({"bandwidth": -1.0}, ValueError, "bandwidth must be a positive finite"),
        ({"bandwidth": math.nan}, ValueError, "bandwidth must be a positive finite"),
        ({"bandwidth": math.inf}, ValueError, "bandwidth must be a positive finite"),
        ({"kernel": "gauss"}, ValueError, "unknown kernel 'gauss'"),
        ({"alpha": math.nan}, ValueError, "alpha must be finite"),
        ({"alpha": -math.inf}, ValueError, "alpha must be finite"),
        ({"alpha": "0.5"}, TypeError, "alpha must be a real number"),
        ({"num_prior_samples": 1}, ValueError, "num_prior_samples must be >= 2"),
        ({"num_prior_samples": 0}, ValueError, "num_prior_samples must be >= 1"),
        ({"num_particles": 0}, ValueError, "num_particles must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TraceInfoVAE_ELBO(**kwargs)


def test_defaults_are_the_registrys_not_a_plain_elbo():
    """TraceInfoVAE_ELBO() is the registry's InfoVAE (alpha 1, lambda 10, IMQ, h 1), not alpha 0, lambda 1 (= Trace_ELBO)."""
    from pyro_mapa.methods import DEFAULT_OPTIONS

    elbo = TraceInfoVAE_ELBO()
    assert (elbo.alpha, elbo.lambda_, elbo.bandwidth) == (1.0, 10.0, 1.0) and elbo.kernel is imq_kernel
    assert elbo.mmd_weight == 10.0
    reg = DEFAULT_OPTIONS["InfoVAE"]
    assert (reg["alpha"], reg["lambda_"], reg["kernel"], reg["bandwidth"]) == (1.0, 10.0, "imq", 1.0)
    # The edges of the allowed range are accepted: alpha = 1 (MMD-VAE), any lambda > 0, negative alpha.
    for alpha, lambda_ in ((1.0, 1e-6), (-3.0, 0.5), (0.0, 1.0)):
        TraceInfoVAE_ELBO(alpha, lambda_)


def test_mmd_u_statistic_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_u_statistic(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="same feature dim"):
        mmd_u_statistic(torch.zeros(3, 2), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="unknown kernel"):
        mmd_u_statistic(torch.zeros(3, 2), torch.zeros(5, 2), kernel="laplace")


def _plated(latents, outside=(), reparam=True, n=6):
    """A model/guide pair with latent sites ``latents`` in plate 'data' and ``outside`` outside it."""
    q = dist.Normal if reparam else dist.Poisson

    def model(idx=None):
        for name in outside:
            pyro.sample(name, dist.Normal(0.0, 1.0))
        with pyro.plate("data", n, subsample=idx) as i:
            for name in latents:
                pyro.sample(name, dist.Normal(0.0, 1.0) if reparam else dist.Poisson(2.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(n)[i])

    def guide(idx=None):
        for name in outside:
            pyro.sample(name, dist.Normal(0.0, 1.0))
        with pyro.plate("data", n, subsample=idx):
            for name in latents:
                pyro.sample(name, q(1.0, 1.0) if reparam else q(2.0))

    return model, guide


@pytest.mark.parametrize(
    "latents, outside, reparam, match",
    [
        ((), (), True, "no latent sample site"),
        (("z", "u"), (), True, r"more than one latent site in the data plate 'data' \(\['z', 'u'\]\)"),
        (("z",), ("w",), True, "latent site 'w' is outside the data plate 'data'"),
        ((), ("w",), True, "latent site 'w' is not inside any plate"),
        (("z",), (), False, "guide site 'z' is not reparameterizable"),
    ],
)
def test_bad_models(latents, outside, reparam, match):
    model, guide = _plated(latents, outside, reparam)
    with pytest.raises(ValueError, match=match):
        TraceInfoVAE_ELBO(1.0, 1.0).loss(model, guide)


def test_named_plate_and_batch_of_one():
    model, guide = _plated(("z",))
    with pytest.raises(ValueError, match="latent site 'z' is outside the data plate 'batch'"):
        TraceInfoVAE_ELBO(1.0, 1.0, plate="batch").loss(model, guide)
    with pytest.raises(ValueError, match="has 1 point; the MMD U-statistic needs at least 2"):
        TraceInfoVAE_ELBO(1.0, 1.0).loss(model, guide, torch.tensor([3]))
    # without the MMD term (alpha + lambda_ = 1) a batch of one is fine, as in Trace_ELBO
    assert math.isfinite(TraceInfoVAE_ELBO(0.5, 0.5).loss(model, guide, torch.tensor([3])))
