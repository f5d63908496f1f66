import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from conftest import make_empiricalized
from pyro_mapa import (
    GaussianKernel,
    MAPAGuide,
    NonFiniteLossError,
    PosteriorTable,
    TraceMAPA_ELBO,
    empirical_log_likelihood,
)


def mapa_setup(n=12, bandwidth=0.5, seed=0):
    model, x, lik = make_empiricalized(n=n, seed=seed)
    table = PosteriorTable.from_data(x, GaussianKernel(bandwidth))
    return model, MAPAGuide(table, "c", "data"), x, lik


def exact_lml(model, lik):
    return float(empirical_log_likelihood(model.codebook, lik).sum().detach())


def bound(model, guide, k, s, batch=None):
    return -TraceMAPA_ELBO(k, s).loss(model, guide, batch)


def test_num_top_n_is_exact_full_batch():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    assert bound(model, guide, n, 0) == pytest.approx(exact_lml(model, lik), rel=1e-6)
    # S is irrelevant when K = N: there is no remainder.
    assert bound(model, guide, n, 7) == pytest.approx(exact_lml(model, lik), rel=1e-6)


def test_num_top_n_is_exact_averaged_over_minibatches():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    perm = torch.randperm(n)
    batches = [perm[:5], perm[5:9], perm[9:]]  # sizes that do not divide N
    # Each minibatch estimate is scaled by N/|B|; weighting by |B|/N recovers the total.
    total = sum(len(b) / n * bound(model, guide, n, 0, b) for b in batches)
    assert total == pytest.approx(exact_lml(model, lik), rel=1e-6)
    # And each scaled minibatch equals N/|B| times the exact sum over its points.
    per_point = empirical_log_likelihood(model.codebook, lik)
    for b in batches:
        assert bound(model, guide, n, 0, b) == pytest.approx(n / len(b) * float(per_point[b].sum().detach()), rel=1e-6)


def test_top1_is_autoencoder_objective_minus_n_log_n():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    cb = model.codebook
    recon = float(lik(cb.decoder(cb.encoder(x))).log_prob(x).sum().detach())
    assert bound(model, guide, 1, 0) == pytest.approx(recon - n * math.log(n), rel=1e-6)
    # The documented defaults (K = 1, S = 0) are this autoencoder objective.
    assert -TraceMAPA_ELBO().loss(model, guide, None) == pytest.approx(recon - n * math.log(n), rel=1e-6)


def test_step_count_counts_evaluations_from_zero():
    """``step_count`` is the counter-based RNG's step (documented): 0 before the first evaluation, +1 per evaluation."""
    model, guide, x, _ = mapa_setup()
    elbo = TraceMAPA_ELBO(1, 2, rng_seed=3)
    assert elbo.step_count == 0
    for step in range(1, 4):
        elbo.loss(model, guide, None)
        assert elbo.step_count == step


def test_bound_increases_with_k_when_s_is_zero():
    model, guide, x, lik = mapa_setup()
    values = [bound(model, guide, k, 0) for k in range(1, len(x) + 1)]
    assert all(b >= a - 1e-4 for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(exact_lml(model, lik), rel=1e-6)


def test_sampled_bound_between_s0_bound_and_exact():
    model, guide, x, lik = mapa_setup(bandwidth=1.0)
    k, s, draws = 2, 3, 400
    elbo = TraceMAPA_ELBO(k, s)
    vals = torch.tensor([-elbo.loss(model, guide) for _ in range(draws)])
    lower = bound(model, guide, k, 0)
    exact = exact_lml(model, lik)
    se = float(vals.std() / math.sqrt(draws))
    # Every draw adds a non-negative term inside the log, so each is >= the S=0 bound.
    assert (vals >= lower - 1e-4).all()
    assert float(vals.mean()) <= exact + 3 * se
    assert float(vals.mean()) > lower + 1.0, "sampling the remainder must tighten the bound here"


def inner_ratio(elbo, model, guide, lik, point, draws):
    """``draws`` samples of exp(L_n) / p(x_n) for one point: an O(1) quantity with mean exactly 1.

    With a batch of one point the estimate is N · L_n. Dividing by the exact p(x_n) (about 2.6e-10
    here) makes the test scale-free: a missing ``log S``, a zero remainder or a wrong threshold move
    the mean by far more than 4 standard errors.
    """
    n = len(model.codebook.data)
    log_exact = float(empirical_log_likelihood(model.codebook, lik)[point].detach())
    ratios = torch.tensor(
        [math.exp(-elbo.loss(model, guide, torch.tensor([point])) / n - log_exact) for _ in range(draws)],
        dtype=torch.float64,
    )
    return float(ratios.mean()), float(ratios.std() / math.sqrt(draws))


@pytest.mark.parametrize("remainder, s", [("with_replacement", 2), ("without_replacement", 3)])
def test_inner_estimate_is_unbiased_per_point(remainder, s):
    """exp(L_n) is an unbiased estimate of p(x_n): the log q̃ and log S corrections (or the inclusion
    weights) are right. Here the top-1 term is only 7.7 % of p(x_n), so an estimator that drops the
    remainder (ratio 0.077), forgets log S (1.9) or uses a wrong Gumbel threshold (1.47) is > 9 se off."""
    model, guide, x, lik = mapa_setup(bandwidth=2.0)
    mean, se = inner_ratio(TraceMAPA_ELBO(1, s, remainder=remainder), model, guide, lik, 3, 1200)
    assert se < 0.05, "the check must resolve a 5 % bias"
    assert abs(mean - 1.0) < 4 * se


def test_gradients_equal_exact_objective_at_k_equals_n():
    model, guide, x, lik = mapa_setup()
    params = list(model.codebook.parameters())
    loss = TraceMAPA_ELBO(len(x), 0).differentiable_loss(model, guide)
    grads = torch.autograd.grad(loss, params)
    exact = -empirical_log_likelihood(model.codebook, lik).sum()
    exact_grads = torch.autograd.grad(exact, params)
    for g, e in zip(grads, exact_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_loss_and_grads_matches_differentiable_loss():
    model, guide, x, lik = mapa_setup()
    elbo = TraceMAPA_ELBO(4, 0)
    pyro.set_rng_seed(3)
    value = elbo.loss_and_grads(model, guide)
    grads = [p.grad.clone() for p in model.codebook.parameters()]
    model.codebook.zero_grad()
    loss = elbo.differentiable_loss(model, guide)
    assert value == pytest.approx(float(loss.detach()), rel=1e-6)
    for g, e in zip(grads, torch.autograd.grad(loss, list(model.codebook.parameters()))):
        torch.testing.assert_close(g, e)


def test_elbo_module_call():
    model, guide, x, lik = mapa_setup()
    module = TraceMAPA_ELBO(len(x))(model, guide)
    assert float(module().detach()) == pytest.approx(-exact_lml(model, lik), rel=1e-6)


def test_globals_counted_once_and_nested_plates():
    """A global observed site is added once; an inner plate over coordinates is summed per point."""
    _, x, lik = make_empiricalized()
    base, _, _ = make_empiricalized()
    cb = base.codebook
    n = len(x)

    def model(batch_idx=None):
        pyro.module("codebook", cb)
        pyro.sample("g", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
        with pyro.plate("data", n, subsample=batch_idx, dim=-2) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))
            with pyro.plate("coords", 2, dim=-1):
                # c has shape (..., B, 1) here: the code axis is the coords plate.
                pyro.sample("x", dist.Normal(cb(c.squeeze(-1)), lik.sigma), obs=x[idx])

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    value = -TraceMAPA_ELBO(n).loss(model, guide)
    expected = exact_lml(base, lik) + float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.5)))
    assert value == pytest.approx(expected, rel=1e-6)


def test_subsample_size_inside_model():
    """A model that draws its own minibatch (subsample_size) is evaluated on that same minibatch."""
    base, x, lik = make_empiricalized()
    n = len(x)

    def model():
        pyro.module("codebook", base.codebook)
        with pyro.plate("data", n, subsample_size=5) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))
            pyro.sample("x", lik(base.codebook(c)), obs=x[idx])

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    values = [-TraceMAPA_ELBO(n).loss(model, guide) for _ in range(300)]
    # Unbiased for the exact LML: the mean of the scaled minibatch estimates converges to it.
    se = torch.tensor(values).std().item() / math.sqrt(len(values))
    assert abs(sum(values) / len(values) - exact_lml(base, lik)) < 4 * se


def test_underflowed_remainder_gives_finite_bound():
    model, _, x, lik = mapa_setup()
    n = len(x)
    # A table that puts all mass on each point's own index: the remainder underflows.
    log_q = torch.full((n, n), -math.inf)
    log_q.fill_diagonal_(0.0)
    guide = MAPAGuide(PosteriorTable.from_log_probs(log_q), "c", "data")
    val = bound(model, guide, 1, 4)
    assert math.isfinite(val)
    assert val >= bound(model, guide, 1, 0) - 1e-4


def test_k_plus_s_larger_than_n_is_fine_and_k_above_n_is_an_error():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    assert bound(model, guide, n - 1, n + 5) <= exact_lml(model, lik) + 1e-3
    with pytest.raises(ValueError, match="num_top"):
        bound(model, guide, n + 1, 0)


def test_trace_elbo_with_mapa_guide_is_a_lower_bound():
    """MAPAGuide is an ordinary Pyro guide: Trace_ELBO with it is the K=0, S=1 estimator."""
    model, guide, x, lik = mapa_setup(bandwidth=1.0)
    g = MAPAGuide(guide.table, "c", "data", model=model)
    batch = torch.arange(4)
    vals = torch.tensor([-Trace_ELBO().loss(model, g, batch) for _ in range(200)])
    exact_batch = len(x) / 4 * float(empirical_log_likelihood(model.codebook, lik)[batch].sum().detach())
    assert float(vals.mean()) <= exact_batch
    assert torch.isfinite(vals).all()


def test_nan_loss_is_a_clear_error():
    """With validation off (Pyro's fast path), a NaN decoder still stops with our error, not a NaN loss."""
    pyro.enable_validation(False)
    model, guide, x, lik = mapa_setup()
    with torch.no_grad():
        next(model.codebook.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="likelihood"):
        TraceMAPA_ELBO(2, 2).loss(model, guide)


def test_an_infinite_global_term_is_named():
    model, guide, x, lik = mapa_setup()

    def with_infinite_factor(batch=None):
        pyro.factor("g", torch.tensor(math.inf))  # a global term of +inf: neither NaN nor -inf
        return model(batch)

    with pytest.raises(NonFiniteLossError, match=r"non-finite term\(s\): globals\."):
        TraceMAPA_ELBO(2, 2, max_plate_nesting=1).loss(with_infinite_factor, guide)


@pytest.mark.parametrize("k, s, match", [(-1, 0, "num_top"), (1, -2, "num_samples"), (0, 0, "num_top \\+ num_samples")])
def test_bad_k_s(k, s, match):
    with pytest.raises(ValueError, match=match):
        TraceMAPA_ELBO(k, s)


def test_k_s_types():
    with pytest.raises(TypeError, match="num_top"):
        TraceMAPA_ELBO(1.5)


def test_guide_model_mismatches():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    with pytest.raises(ValueError, match="no sample site named 'z'"):
        TraceMAPA_ELBO(1).loss(model, MAPAGuide(guide.table, "z", "data"))
    with pytest.raises(ValueError, match="not inside a plate named 'batch'"):
        TraceMAPA_ELBO(1).loss(model, MAPAGuide(guide.table, "c", "batch"))
    other = PosteriorTable.from_data(torch.randn(n + 3, 2), GaussianKernel(1.0))
    with pytest.raises(ValueError, match="categories"):
        TraceMAPA_ELBO(1).loss(model, MAPAGuide(other, "c", "data"))
    with pytest.raises(TypeError, match="MAPAGuide"):
        TraceMAPA_ELBO(1).loss(model, lambda *a: None)


def test_second_latent_site_is_an_error():
    base, x, lik = make_empiricalized()
    n = len(x)

    def model(batch_idx=None):
        with pyro.plate("data", n, subsample=batch_idx) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))
            c2 = pyro.sample("c2", dist.Categorical(logits=torch.zeros(n)))
            pyro.sample("x", lik(base.codebook(c) + base.codebook(c2)), obs=x[idx])

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    with pytest.raises(ValueError, match="latent sample site 'c2'"):
        TraceMAPA_ELBO(1).loss(model, guide)


def test_svi_with_mapa_lowers_loss():
    model, guide, x, lik = mapa_setup(n=40, bandwidth=0.3)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), loss=TraceMAPA_ELBO(3, 3))
    before = exact_lml(model, lik)
    losses = []
    for _ in range(30):
        for b in torch.randperm(40).split(10):
            losses.append(svi.step(b))
    assert exact_lml(model, lik) > before + 5.0
    assert sum(losses[-8:]) < sum(losses[:8])


# ---------------------------------------------------------------- remainder without replacement


def test_without_replacement_exact_when_s_covers_the_remainder():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    for k in (0, 1, 4):
        elbo = TraceMAPA_ELBO(k, n, remainder="without_replacement")
        assert -elbo.loss(model, guide) == pytest.approx(exact_lml(model, lik), rel=1e-6)


def test_without_replacement_distinct_draws_and_inclusion_weights():
    lp = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.07, 0.03]]))
    t = PosteriorTable.from_log_probs(lp)
    g = torch.Generator().manual_seed(1)
    seen = torch.zeros(5)
    for _ in range(2000):
        idx, log_incl = t.sample_remainder_without_replacement(torch.tensor([0]), 1, 2, generator=g)
        assert idx.shape == (1, 2) and idx[0, 0] != idx[0, 1] and not (idx == 0).any()
        assert (log_incl <= 0).all()
        # Unbiasedness of the priority estimator for a_i = 1: E[sum 1/pi_i] = remainder size (4).
        seen[0] += float((-log_incl).exp().sum())
    assert float(seen[0] / 2000) == pytest.approx(4.0, rel=0.05)


def test_without_replacement_is_tighter_here():
    """A remainder dominated by a few entries: sampling them without replacement wastes no draws."""
    model, guide, x, lik = mapa_setup(n=14, bandwidth=0.7)
    exact = exact_lml(model, lik)
    with_r = TraceMAPA_ELBO(1, 6)
    without = TraceMAPA_ELBO(1, 6, remainder="without_replacement")
    a = torch.tensor([-with_r.loss(model, guide) for _ in range(300)])
    b = torch.tensor([-without.loss(model, guide) for _ in range(300)])
    se = float((a.var() / 300 + b.var() / 300).sqrt())
    assert float(b.mean()) > float(a.mean()) + 2 * se
    assert float(b.mean()) <= exact + 3 * float(b.std() / math.sqrt(300))


def test_remainder_option_is_checked():
    with pytest.raises(ValueError, match="remainder"):
        TraceMAPA_ELBO(1, 1, remainder="stratified")


def test_without_replacement_at_one_sample_warns():
    """S = 1 without replacement is looser than with replacement (issue: infinite-variance weight): say so."""
    import warnings as _w

    with pytest.warns(UserWarning, match="num_samples=1 gives a looser bound") as record:
        TraceMAPA_ELBO(1, 1, remainder="without_replacement")
    assert record[0].filename == __file__  # points at the caller's line, not at the library
    with _w.catch_warnings():
        _w.simplefilter("error")
        TraceMAPA_ELBO(1, 2, remainder="without_replacement")
        TraceMAPA_ELBO(1, 1, remainder="with_replacement")


def test_counter_based_draws_without_replacement_are_exact_when_s_covers_the_remainder():
    model, guide, x, lik = mapa_setup()
    n = len(x)
    elbo = TraceMAPA_ELBO(2, n - 2, remainder="without_replacement", rng_seed=7)
    assert -elbo.loss(model, guide, None) == pytest.approx(exact_lml(model, lik), rel=1e-6)
    small = TraceMAPA_ELBO(2, 3, remainder="without_replacement", rng_seed=7)
    values = [small.loss(model, guide, None) for _ in range(3)]
    assert len(set(values)) == 3  # a new counter step each call, reproducible from the seed
    again = TraceMAPA_ELBO(2, 3, remainder="without_replacement", rng_seed=7)
    assert [again.loss(model, guide, None) for _ in range(3)] == values


def test_a_masked_index_site_drops_the_masked_points():
    """Points whose index site is masked out contribute nothing: at K = N the bound is the exact
    log-likelihood summed over the unmasked points only (their likelihood sites are not masked)."""
    g = torch.Generator().manual_seed(3)
    n = 10
    x, means = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    keep = torch.tensor([True, False, True, True, False, True, True, True, False, True])

    def model(batch=None):
        with pyro.plate("data", n, subsample=batch) as idx:
            with pyro.poutine.mask(mask=keep[idx]):  # the index site's mask (not the distribution's)
                c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))
            pyro.sample("x", dist.Normal(means[c], 0.5).to_event(1), obs=x[idx])

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    per_point = torch.logsumexp(dist.Normal(means, 0.5).to_event(1).log_prob(x.unsqueeze(1)), 1) - math.log(n)
    bound = -TraceMAPA_ELBO(n, 0, max_plate_nesting=1).loss(model, guide, None)
    assert bound == pytest.approx(float(per_point[keep].sum()), rel=1e-5)
    # Any K (here one particle): the masked full batch is the kept points' minibatch, unscaled.
    kept = keep.nonzero().squeeze(-1)
    top1 = TraceMAPA_ELBO(1, 0, max_plate_nesting=1)
    assert top1.loss(model, guide, None) == pytest.approx(len(kept) / n * top1.loss(model, guide, kept), rel=1e-5)


def test_an_index_site_after_the_data_plate_is_refused():
    n = 6
    x = torch.randn(n, 2)

    def model(batch=None):
        with pyro.plate("data", n, subsample=batch) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([len(idx), 2]).to_event(1), obs=x[idx])
        pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(1.0)), "c", "data")
    with pytest.raises(ValueError, match="not inside a plate named 'data'"):
        TraceMAPA_ELBO(1, max_plate_nesting=1).loss(model, guide, None)


@pytest.mark.parametrize("k, s", [(10, 0), (3, 0)])
def test_data_plate_left_of_a_nested_plate(k, s):
    """The index site in a data plate at dim -2 with the coordinates in a plate at dim -1: at K = N the
    bound is the exact log-likelihood, below it for K < N (S = 0)."""
    g = torch.Generator().manual_seed(4)
    n = 10
    x, means = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)

    def model(batch=None):
        with pyro.plate("data", n, subsample=batch, dim=-2) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))  # (..., B, 1)
            with pyro.plate("coords", 2, dim=-1):
                pyro.sample("x", dist.Normal(means[c.squeeze(-1)], 0.5), obs=x[idx])

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    exact = float((torch.logsumexp(dist.Normal(means, 0.5).to_event(1).log_prob(x.unsqueeze(1)), 1)
                   - math.log(n)).sum())
    bound = -TraceMAPA_ELBO(k, s, max_plate_nesting=2).loss(model, guide, None)
    if k == n:
        assert bound == pytest.approx(exact, rel=1e-5)
    else:
        assert bound < exact - 1e-3


def test_data_plate_right_of_another_plate():
    """max_plate_nesting = 2 with the data plate at dim -1 (a global plate at dim -2 elsewhere in the
    model): at K = N the bound is the exact log-likelihood plus the global plate's observed terms."""
    g = torch.Generator().manual_seed(5)
    n = 8
    x, means, y = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g), torch.randn(3, 1, generator=g)

    def model(batch=None):
        with pyro.plate("data", n, subsample=batch, dim=-1) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(n)))
            pyro.sample("x", dist.Normal(means[c], 0.5).to_event(1), obs=x[idx])
        with pyro.plate("extra", 3, dim=-2):
            pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.5)), "c", "data")
    exact = float((torch.logsumexp(dist.Normal(means, 0.5).to_event(1).log_prob(x.unsqueeze(1)), 1)
                   - math.log(n)).sum() + dist.Normal(0.0, 1.0).log_prob(y).sum())
    bound = -TraceMAPA_ELBO(n, 0, max_plate_nesting=2).loss(model, guide, None)
    assert bound == pytest.approx(exact, rel=1e-5)
