import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from torch import nn

from pyro_mapa import MeanFieldGuide, NonFiniteLossError, NormalLikelihood, TraceIWAE_ELBO, VAEModel

N, SIGMA = 50, 0.5
A = torch.tensor([[1.5], [-0.7]])
B = torch.tensor([0.3, -0.2])


def linear_gaussian():
    """z ~ N(0,1), x ~ N(A z + B, σ² I): the marginal is N(B, A Aᵀ + σ² I) in closed form."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, 1, generator=g)
    x = z @ A.T + B + SIGMA * torch.randn(N, 2, generator=g)
    dec = nn.Linear(1, 2)
    with torch.no_grad():
        dec.weight.copy_(A)
        dec.bias.copy_(B)
    model = VAEModel(dec, x, 1, NormalLikelihood(SIGMA))
    exact = dist.MultivariateNormal(B, A @ A.T + SIGMA**2 * torch.eye(2)).log_prob(x)
    return model, x, exact


def exact_posterior_guide(x):
    """The true posterior N(m(x), v) written as a MeanFieldGuide with a linear encoder."""
    prec = 1 + float((A**2).sum()) / SIGMA**2
    v = 1 / prec
    enc = nn.Linear(2, 2)
    raw_scale = math.log(math.expm1(math.sqrt(v) - 1e-5))
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[0] = v * A[:, 0] / SIGMA**2
        enc.bias.copy_(torch.tensor([-v * float(A[:, 0] @ B) / SIGMA**2, raw_scale]))
    return MeanFieldGuide(enc, x, 1)


def poor_guide(x):
    enc = nn.Linear(2, 2)
    with torch.no_grad():
        enc.weight.zero_()
        enc.bias.copy_(torch.tensor([0.0, 2.0]))  # q(z|x) = N(0, 2.1²) whatever x
    return MeanFieldGuide(enc, x, 1)


def x_dependent_guide(x):
    """The poor guide with random encoder weights: it depends on x, so every weight gets a gradient."""
    guide = poor_guide(x)
    with torch.no_grad():
        guide.encoder.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return guide


def mean_and_se(elbo, model, guide, draws=400, batch_size=1):
    vals = torch.tensor(
        [-elbo.loss(model, guide, torch.randperm(N)[:batch_size]) for _ in range(draws)], dtype=torch.float64
    )
    return float(vals.mean()), float(vals.std() / math.sqrt(draws))


@pytest.mark.parametrize("num_particles", [1, 5])
def test_exact_with_true_posterior_guide_on_every_minibatch(num_particles):
    model, x, exact = linear_gaussian()
    guide = exact_posterior_guide(x)
    elbo = TraceIWAE_ELBO(num_particles)
    for batch in (torch.arange(N), torch.tensor([3, 7, 11]), torch.arange(10, 17)):
        expected = N / len(batch) * float(exact[batch].sum())
        assert -elbo.loss(model, guide, batch) == pytest.approx(expected, rel=1e-4)


def test_minibatch_bound_tightens_with_particles():
    model, x, exact = linear_gaussian()
    guide = poor_guide(x)
    exact_total = float(exact.sum())
    results = [mean_and_se(TraceIWAE_ELBO(p), model, guide) for p in (1, 10, 300)]
    for mean, se in results:
        assert mean <= exact_total + 3 * se
    means = [m for m, _ in results]
    assert means[0] < means[1] < means[2]
    assert exact_total - means[2] < 0.05 * (exact_total - means[0])


def test_subsampled_iwae_is_a_bound_where_renyi_alpha0_need_not_be(record_property):
    """Why TraceIWAE_ELBO exists: RenyiELBO scales inside the logsumexp (pyro #2220, #3104).

    Our estimator is asserted to be a bound on a minibatched problem. Pyro's behaviour is
    recorded (``record_property``) but not asserted, so this test keeps passing the day Pyro
    fixes it; at pyro-ppl 1.9 its mean exceeds log p(X) by many standard errors here.
    """
    model, x, exact = linear_gaussian()
    guide = poor_guide(x)
    exact_total = float(exact.sum())
    ours, ours_se = mean_and_se(TraceIWAE_ELBO(100), model, guide)
    assert ours <= exact_total + 3 * ours_se
    # ... and it is a tight one: with 100 particles it is within 10 % of the gap of the P = 1 bound.
    elbo1, _ = mean_and_se(TraceIWAE_ELBO(1), model, guide)
    assert exact_total - ours < 0.1 * (exact_total - elbo1)
    renyi = RenyiELBO(alpha=0, num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    mean, se = mean_and_se(renyi, model, guide)
    record_property("renyi_alpha0_excess_in_se", (mean - exact_total) / se)


def grads(elbo, model, guide, batch, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model.zero_grad()
    guide.zero_grad()
    elbo.loss_and_grads(model, guide, batch)
    return (
        torch.cat([p.grad.reshape(-1) for p in model.decoder.parameters()]),
        torch.cat([p.grad.reshape(-1) for p in guide.encoder.parameters()]),
    )


def test_dreg_gradients():
    model, x, exact = linear_gaussian()
    guide = x_dependent_guide(x)
    batch = torch.arange(8)
    plain, dreg = TraceIWAE_ELBO(10), TraceIWAE_ELBO(10, dreg=True)
    dec_p, enc_p, dec_d, enc_d = [], [], [], []
    for seed in range(300):
        a, b = grads(plain, model, guide, batch, seed)
        c, d = grads(dreg, model, guide, batch, seed)
        dec_p.append(a), enc_p.append(b), dec_d.append(c), enc_d.append(d)
        # Same seed, same draws: the model gradient is the plain IWAE gradient exactly.
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    enc_p, enc_d = torch.stack(enc_p), torch.stack(enc_d)
    # Both encoder gradients are unbiased for the same quantity ...
    se = (enc_p.var(0) / len(enc_p) + enc_d.var(0) / len(enc_d)).sqrt()
    assert ((enc_p.mean(0) - enc_d.mean(0)).abs() < 4 * se + 1e-3).all()
    # ... and DReG has the smaller variance.
    assert enc_d.var(0).sum() < enc_p.var(0).sum()


def test_svi_with_iwae_lowers_loss():
    from pyro.infer import SVI
    from pyro.optim import Adam

    model, x, exact = linear_gaussian()
    guide = poor_guide(x)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), TraceIWAE_ELBO(5, dreg=True))
    losses = [svi.step(b) for _ in range(40) for b in torch.randperm(N).split(10)]
    assert sum(losses[-20:]) < sum(losses[:20])


def test_global_latents_run_and_non_reparameterized_sites_are_refused_by_name():
    x = torch.randn(10, 2)

    def model_global(batch=None):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10, subsample=batch) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal((z + g).unsqueeze(-1) * torch.ones(2), 1.0).to_event(1), obs=x[idx])

    def guide_global(batch=None):
        g = pyro.sample("g", dist.Normal(pyro.param("g_loc", torch.tensor(0.2)), 1.0))
        assert g.shape == ()  # drawn once per step, shared by the particles
        with pyro.plate("data", 10, subsample=batch):
            pyro.sample("z", dist.Normal(0.5 * g, 1.0))

    pyro.clear_param_store()
    for plate in (None, "data"):
        pyro.set_rng_seed(0)
        expected = Trace_ELBO().loss(model_global, guide_global, torch.arange(4))
        pyro.set_rng_seed(0)
        assert TraceIWAE_ELBO(1, plate=plate).loss(model_global, guide_global, torch.arange(4)) == pytest.approx(
            expected, rel=1e-6
        )
        assert math.isfinite(TraceIWAE_ELBO(3, plate=plate, dreg=True).loss_and_grads(model_global, guide_global))

    def model_discrete(batch=None):
        with pyro.plate("data", 10, subsample=batch) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * torch.ones(2), 1.0).to_event(1), obs=x[idx])

    def guide_discrete(batch=None):
        with pyro.plate("data", 10, subsample=batch):
            pyro.sample("z", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="guide site 'z' \\(Bernoulli\\) is not reparameterizable.*use Trace_ELBO or "
                                         "TraceGraph_ELBO"):
        TraceIWAE_ELBO(3).loss(model_discrete, guide_discrete)


@pytest.mark.parametrize("bad", [0, -3])
def test_num_particles_below_one_is_refused_with_one_message(bad):
    with pytest.raises(ValueError, match=f"num_particles must be >= 1, got {bad}"):
        TraceIWAE_ELBO(bad)
    with pytest.raises(TypeError, match="num_particles must be an int"):
        TraceIWAE_ELBO(2.0)


@pytest.mark.parametrize("num_particles", [1, 3, 4])
def test_loop_data_plate_is_one_point_per_iteration(num_particles):
    """A Python-loop plate of 4 (= P for P = 4, != P for P = 3): no crash, and no factor of the plate size.

    With the guide equal to the exact posterior of independent Normal sites, every log-weight is
    log p(x_i) exactly, so the bound is exact whatever P: the 2x (8.35 for 4.18) bug would show.
    """
    obs = torch.tensor([0.3, -1.2, 0.8, 2.0])

    def model():
        for i in pyro.plate("loop", 4):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=obs[i])

    def guide():
        for i in pyro.plate("loop", 4):
            pyro.sample(f"z_{i}", dist.Normal(obs[i] / 2, math.sqrt(0.5)))

    exact = float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(obs).sum())
    assert -TraceIWAE_ELBO(num_particles).loss(model, guide) == pytest.approx(exact, rel=1e-5)


def test_the_default_data_plate_is_the_outermost():
    """Every latent site in plates 'data' (outer, subsampled) and 'coords' (inner): 'data' is the data plate."""
    def model(batch):
        with pyro.plate("data", 10, subsample=batch, dim=-2), pyro.plate("coords", 3, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.ones(len(batch), 3))

    def guide(batch):
        with pyro.plate("data", 10, subsample=batch, dim=-2), pyro.plate("coords", 3, dim=-1):
            pyro.sample("z", dist.Normal(0.4, 0.8))

    batch = torch.tensor([1, 5])
    pyro.set_rng_seed(0)
    auto = TraceIWAE_ELBO(4, max_plate_nesting=2).loss(model, guide, batch)
    pyro.set_rng_seed(0)
    assert TraceIWAE_ELBO(4, max_plate_nesting=2, plate="data").loss(model, guide, batch) == auto
    with pytest.raises(ValueError, match="'data' \\(2 of 10\\) inside a point of the data plate 'coords'"):
        TraceIWAE_ELBO(4, max_plate_nesting=2, plate="coords").loss(model, guide, batch)


def test_default_is_ten_particles():
    model, x, _ = linear_gaussian()
    guide = poor_guide(x)
    batch = torch.arange(6)
    pyro.set_rng_seed(4)
    default = TraceIWAE_ELBO(max_plate_nesting=1).loss(model, guide, batch)
    pyro.set_rng_seed(4)
    assert TraceIWAE_ELBO(10, max_plate_nesting=1).loss(model, guide, batch) == default
    pyro.set_rng_seed(4)
    assert TraceIWAE_ELBO(11, max_plate_nesting=1).loss(model, guide, batch) != default


def test_differentiable_loss_is_the_loss_and_gives_its_gradients():
    model, x, _ = linear_gaussian()
    guide = x_dependent_guide(x)
    batch = torch.arange(8)
    elbo = TraceIWAE_ELBO(5, max_plate_nesting=1)  # no nesting guess: each call draws the same way
    pyro.set_rng_seed(2)
    value = elbo.loss(model, guide, batch)
    pyro.set_rng_seed(2)
    loss = elbo.differentiable_loss(model, guide, batch)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-6) and value > 0  # minus a bound well below 0
    model.zero_grad()
    guide.zero_grad()
    loss.backward()
    by_backward = torch.cat([p.grad.reshape(-1) for p in [*model.decoder.parameters(), *guide.encoder.parameters()]])
    dec, enc = grads(elbo, model, guide, batch, 2)
    torch.testing.assert_close(by_backward, torch.cat([dec, enc]))


def test_an_observed_site_outside_the_data_plate_adds_its_log_probability_once():
    """log p(y) of a global observed y enters the bound once per step, not scaled by N/B, with a plus sign."""
    model, x, exact = linear_gaussian()
    guide = exact_posterior_guide(x)
    y = torch.tensor(1.3)

    def with_global(batch=None):
        pyro.sample("y", dist.Normal(0.0, 2.0), obs=y)
        return model(batch)

    batch = torch.tensor([1, 4, 9])
    expected = N / len(batch) * float(exact[batch].sum()) + float(dist.Normal(0.0, 2.0).log_prob(y))
    assert -TraceIWAE_ELBO(3).loss(with_global, guide, batch) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("data_dim", [-2, -1])
def test_a_plate_nested_inside_the_data_plate_is_summed_per_point(num_particles, data_dim):
    """The linear-Gaussian model with its two coordinates in a nested plate (right or left of the data
    plate's dim) instead of ``to_event(1)``: the same exact bound (the guide is the exact posterior)."""
    model, x, exact = linear_gaussian()
    guide = exact_posterior_guide(x)
    coords_dim = -1 if data_dim == -2 else -2

    def layout(t):  # (..., B, 2) -> the batch layout of the two plates
        return t if data_dim == -2 else t.transpose(-1, -2)

    def nested(batch=None):
        pyro.module("decoder", model.decoder)
        with pyro.plate("data", N, subsample=batch, dim=data_dim) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            # z: (B, 1), or (P, B, 1, 1) / (P, 1, B, 1) with particles: drop the size-1 slot of the other plate.
            means = model.decoder(z.squeeze(-2) if data_dim == -2 else (z.squeeze(-3) if z.dim() == 4 else z))
            with pyro.plate("coords", 2, dim=coords_dim):
                pyro.sample("x", dist.Normal(layout(means), SIGMA), obs=layout(x[idx]))

    def nested_guide(batch=None):
        pyro.module("encoder", guide.encoder)
        with pyro.plate("data", N, subsample=batch, dim=data_dim) as idx:
            q = guide.distribution(x[idx])
            loc, scale = q.base_dist.loc, q.base_dist.scale
            if data_dim == -2:
                loc, scale = loc.unsqueeze(-2), scale.unsqueeze(-2)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    batch = torch.tensor([0, 5, 6, 20])
    expected = N / len(batch) * float(exact[batch].sum())
    value = -TraceIWAE_ELBO(num_particles, max_plate_nesting=2, plate="data").loss(nested, nested_guide, batch)
    assert value == pytest.approx(expected, rel=1e-4)


def test_dreg_counts_a_parameter_registered_twice_once_and_allows_unused_ones():
    model, x, _ = linear_gaussian()
    guide = x_dependent_guide(x)
    batch = torch.arange(8)
    unused = nn.Linear(1, 1)

    def model_with_unused(batch=None):
        pyro.module("unused", unused)  # registered, never used by the loss
        return model(batch)

    def guide_registered_twice(batch=None):
        pyro.module("encoder_again", guide.encoder)  # the same tensors under a second name
        return guide(batch)

    def run(m, g):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        for p in [*model.decoder.parameters(), *guide.encoder.parameters()]:
            p.grad = None
        TraceIWAE_ELBO(10, dreg=True, max_plate_nesting=1).loss_and_grads(m, g, batch)
        return torch.cat([p.grad.reshape(-1) for p in [*model.decoder.parameters(), *guide.encoder.parameters()]])

    torch.testing.assert_close(run(model_with_unused, guide_registered_twice), run(model, guide))
    assert all(p.grad is None or not p.grad.any() for p in unused.parameters())


def test_non_finite_loss_names_its_cause():
    model, x, _ = linear_gaussian()
    guide = exact_posterior_guide(x)
    nan = torch.tensor(float("nan"))

    def nan_global(batch=None):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=nan)
        return model(batch)

    class NaNDecoder(nn.Module):
        def forward(self, z):
            return model.decoder(z) * nan

    nan_local = VAEModel(NaNDecoder(), x, 1, NormalLikelihood(SIGMA))

    with pyro.validation_enabled(False):  # Pyro's own checks would refuse the NaN first
        with pytest.raises(NonFiniteLossError, match="globals are non-finite"):
            TraceIWAE_ELBO(3).loss(nan_global, guide, torch.arange(4))
        with pytest.raises(NonFiniteLossError, match="log-weights are non-finite"):
            TraceIWAE_ELBO(3).loss(nan_local, guide, torch.arange(4))


def test_dreg_gradient_equals_a_hand_written_dreg_estimator_on_the_same_draws():
    """DReG (Tucker et al. 2019, Eq. 7) written out in plain torch for the linear-Gaussian model, on the
    draws Pyro makes under the same seed: sum_p w~_p² d log w_p/dz_p dz_p/dphi with phi fixed inside log q."""
    model, x, _ = linear_gaussian()
    x = x.clone()
    x[30] += 20.0  # an outlier: every weight of this point is hundreds of nats below the other points'
    model = VAEModel(model.decoder, x, 1, NormalLikelihood(SIGMA))
    guide = x_dependent_guide(x)
    with torch.no_grad():
        guide.encoder.bias[1] = 0.0  # a narrower guide: uneven weights, some far below their point's largest
    batch, p, seed = torch.tensor([0, 3, 4, 10, 30]), 6, 11
    elbo = TraceIWAE_ELBO(p, dreg=True, max_plate_nesting=1)

    def by_hand():
        pyro.set_rng_seed(seed)
        q = guide.distribution(x[batch])
        eps = torch.empty(p, len(batch), 1).normal_()  # the draws Normal.rsample makes under the seed
        z = q.base_dist.loc + q.base_dist.scale * eps
        fixed = dist.Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach()).to_event(1)
        log_w = (dist.Normal(model.decoder(z), SIGMA).to_event(1).log_prob(x[batch])
                 + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - fixed.log_prob(z))
        w = torch.softmax(log_w.detach(), 0)
        bound = N / len(batch) * (torch.logsumexp(log_w, 0) - math.log(p)).sum()
        surrogate = N / len(batch) * (w.pow(2) * log_w).sum()
        enc = torch.autograd.grad(-surrogate, list(guide.encoder.parameters()), retain_graph=True)
        dec = torch.autograd.grad(-bound, list(model.decoder.parameters()))
        return float(-bound.detach()), torch.cat([g.reshape(-1) for g in dec]), torch.cat([g.reshape(-1) for g in enc])

    loss, dec_h, enc_h = by_hand()
    pyro.set_rng_seed(seed)
    assert elbo.loss(model, guide, batch) == pytest.approx(loss, rel=1e-5)  # the same draws
    dec, enc = grads(elbo, model, guide, batch, seed)
    torch.testing.assert_close(dec, dec_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc, enc_h, rtol=1e-4, atol=1e-5)
    assert enc_h.abs().max() > 1e-2  # a gradient that the comparison can see


def test_whole_trace_bound_refuses_subsampled_plates_and_names_the_fix():
    """No latent in any plate: the whole-trace IWAE, not a bound with subsampled observations (P > 1)."""
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10, 5):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.zeros(5))

    def guide():
        pyro.sample("loc", dist.Normal(0.3, 1.0))

    with pytest.raises(ValueError, match="site 'x' is in the subsampled plate\\(s\\) 'data' \\(5 of 10\\) with no data "
                                         "plate.*TraceIWAE_ELBO\\(plate=<the subsampled plate>\\)"):
        TraceIWAE_ELBO(3).loss(model, guide)
    # The named fix: 'data' as the data plate makes loc a global, drawn once: the ELBO on the same draw.
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().loss(model, guide)
    pyro.set_rng_seed(0)
    assert TraceIWAE_ELBO(3, plate="data").loss(model, guide) == pytest.approx(expected, rel=1e-6)
