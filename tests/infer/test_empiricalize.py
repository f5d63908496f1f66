"""empiricalize: a user's Pyro model, empiricalized by a handler, against exact answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.optim import Adam
from torch import nn

from pyro_mapa import GaussianKernel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, empiricalize

N, D, d, SIGMA = 24, 3, 2, 0.5


def networks(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(D, d), nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, D))


def data(seed=1):
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed))


def tutorial_model(decoder):
    """Written as in Pyro's VAE tutorial: a plate of the minibatch's size."""

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(decoder(z), SIGMA).to_event(1), obs=x)

    return model


def subsample_model(decoder, X):
    """A full-size plate subsampled with subsample=: the model indexes its own data."""

    def model(idx=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", N, subsample=idx) as i:
            z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(decoder(z), SIGMA).to_event(1), obs=X[i])

    return model


def exact_point_loglik(encoder, decoder, X):
    """log (1/N) sum_i N(x_n; f(g(x_i)), sigma^2 I) in float64, per point n."""
    with torch.no_grad():
        mu = decoder(encoder(X)).double()
    ll = dist.Normal(mu.unsqueeze(0), SIGMA).log_prob(X.double().unsqueeze(1)).sum(-1)  # (n, i)
    return ll.logsumexp(1) - math.log(N)


@pytest.mark.parametrize("kind", ["tutorial", "subsample"])
def test_k_equal_n_is_the_exact_minibatch_estimate(kind):
    enc, dec = networks()
    X = data()
    rows = torch.tensor([3, 7, 11, 20, 21])
    table = PosteriorTable.from_data(X, GaussianKernel(0.7))
    if kind == "tutorial":
        emp, args = empiricalize(tutorial_model(dec), "latent", enc, X), (X[rows],)
    else:
        emp, args = empiricalize(subsample_model(dec, X), "latent", enc, X), (rows,)
    loss = TraceMAPA_ELBO(num_top=N).loss(emp, MAPAGuide(table, site="latent"), *args, rows=rows)
    exact = (N / len(rows)) * exact_point_loglik(enc, dec, X)[rows].sum()
    assert loss == pytest.approx(-float(exact), rel=1e-5)


def test_gradients_match_the_exact_objective():
    enc, dec = networks()
    X = data()
    rows = torch.arange(N)
    emp = empiricalize(tutorial_model(dec), "latent", enc, X)
    loss = TraceMAPA_ELBO(num_top=N).differentiable_loss(
        emp, MAPAGuide(PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent"), X, rows=rows
    )
    params = list(enc.parameters()) + list(dec.parameters())
    got = torch.autograd.grad(loss, params)
    mu = dec(enc(X))
    ll = dist.Normal(mu.unsqueeze(0), SIGMA).log_prob(X.unsqueeze(1)).sum(-1)
    exact = -(ll.logsumexp(1) - math.log(N)).sum()
    want = torch.autograd.grad(exact, params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_bound_is_below_the_exact_value_in_expectation():
    enc, dec = networks()
    X = data()
    emp = empiricalize(tutorial_model(dec), "latent", enc, X)
    guide = MAPAGuide(PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent")
    rows = torch.arange(N)
    pyro.set_rng_seed(0)
    elbo = TraceMAPA_ELBO(num_top=1, num_samples=2)
    draws = torch.tensor([-elbo.loss(emp, guide, X, rows=rows) for _ in range(300)], dtype=torch.float64)
    exact = float(exact_point_loglik(enc, dec, X).sum())
    gap = exact - draws.mean()
    se = draws.std() / math.sqrt(len(draws))
    assert gap > 3 * se  # a lower bound, strictly here
    assert gap < 50  # and not absurdly loose (K = 1 of 24 plus 2 samples)


def test_trace_records_index_code_and_scale():
    enc, dec = networks()
    X = data()
    emp = empiricalize(tutorial_model(dec), "latent", enc, X)
    rows = torch.tensor([0, 5, 9, 9])
    tr = poutine.trace(emp).get_trace(X[rows], rows=rows)
    index, code = tr.nodes["latent"], tr.nodes["latent_code"]
    assert isinstance(index["fn"], dist.Distribution) and index["fn"].support.upper_bound == N - 1
    assert torch.equal(tr.nodes["data"]["value"], rows)
    with torch.no_grad():
        assert torch.allclose(code["value"], enc(X[index["value"]]))
    assert float(code["fn"].log_prob(code["value"]).abs().sum()) == 0.0  # no log-density of its own
    for name in ("latent", "latent_code", "obs"):
        assert tr.nodes[name]["scale"] == pytest.approx(N / 4)
        frame = [f for f in tr.nodes[name]["cond_indep_stack"] if f.name == "data"][0]
        assert frame.full_size == N and frame.size == 4
    assert float(tr.nodes["latent"]["fn"].log_prob(index["value"])[0]) == pytest.approx(-math.log(N))


def test_model_still_sees_minibatch_positions():
    enc, dec = networks()
    X = data()
    seen = {}

    def model(x):
        with pyro.plate("data", x.shape[0]) as i:
            seen["i"] = i
            z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(dec(z), SIGMA).to_event(1), obs=x[i])

    rows = torch.tensor([17, 2, 22])
    empiricalize(model, "latent", enc, X)(X[rows], rows=rows)
    assert torch.equal(seen["i"], torch.arange(3))


def test_encoder_runs_once_per_unique_index():
    enc, dec = networks()
    X = data()
    emp = empiricalize(tutorial_model(dec), "latent", enc, X)
    guide = MAPAGuide(PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent")
    rows = torch.arange(6)
    elbo = TraceMAPA_ELBO(num_top=N)
    elbo.loss(emp, guide, X[rows], rows=rows)  # the first call also guesses the plate nesting
    before = emp.encoder_passes
    elbo.loss(emp, guide, X[rows], rows=rows)
    assert emp.encoder_passes - before == N  # 6 points x 24 indices, 24 unique rows


def test_svi_trains_and_rows_default_for_a_full_plate():
    enc, dec = networks()
    X = data()
    emp = empiricalize(subsample_model(dec, X), "latent", enc, X)
    guide = MAPAGuide(PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent")
    pyro.clear_param_store()
    svi = SVI(emp, guide, Adam({"lr": 0.02}), TraceMAPA_ELBO(num_top=N))
    first = svi.step()  # no rows: the plate's own (full) subsample
    for _ in range(60):
        last = svi.step()
    assert last < first - 1.0
    assert set(pyro.get_param_store().keys()) >= {"latent_encoder$$$weight", "decoder$$$0.weight"}


def test_trace_elbo_with_the_table_as_proposal():
    """With Trace_ELBO the MAPA guide is a proposal (K = 0, S = 1); its loss is an upper bound on -log p."""
    enc, dec = networks()
    X = data()
    emp = empiricalize(tutorial_model(dec), "latent", enc, X)
    guide = MAPAGuide(PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent")
    rows = torch.tensor([1, 4, 8])
    pyro.set_rng_seed(0)
    losses = torch.tensor([Trace_ELBO().loss(emp, guide, X[rows], rows=rows) for _ in range(200)])
    exact = -(N / 3) * float(exact_point_loglik(enc, dec, X)[rows].sum())
    assert float(losses.mean()) > exact


# ---------------------------------------------------------------- global latents beside the index


def global_model(decoder):
    def model(x):
        pyro.module("decoder", decoder)
        s = pyro.sample("sigma", dist.LogNormal(0.0, 0.5))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(decoder(z), s).to_event(1), obs=x)

    return model


def global_exact(enc, dec, X, loc, scale):
    """E_q[log p(s) - log q(s) + sum_n log p_emp(x_n | s)] and log p(X), by quadrature over log s."""
    with torch.no_grad():
        mu = dec(enc(X)).double()
    u = torch.linspace(-9, 9, 3001, dtype=torch.float64)
    w = torch.full_like(u, float(u[1] - u[0]))
    sig = (loc + scale * u).exp()
    ll = dist.Normal(mu.unsqueeze(0).unsqueeze(0), sig.reshape(-1, 1, 1, 1)).log_prob(X.double().unsqueeze(1)).sum(-1)
    total = (ll.logsumexp(-1) - math.log(N)).sum(-1)  # (G,)
    lp = dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5).log_prob(sig)
    lq = dist.LogNormal(torch.tensor(loc, dtype=torch.float64), scale).log_prob(sig)
    phi = dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(u).exp()
    expected = float((w * phi * (total + lp - lq)).sum())
    log_px = float(torch.logsumexp(w.log() + total + lp + sig.log() + math.log(scale), 0))
    return expected, log_px


@pytest.mark.parametrize("compose", ["globals_guide", "AutoGuideList"])
def test_globals_are_drawn_once_and_the_bound_is_exact_in_expectation(compose):
    enc, dec = networks()
    X = data()
    emp = empiricalize(global_model(dec), "latent", enc, X)
    table = PosteriorTable.from_data(X, GaussianKernel(0.7))
    pyro.clear_param_store()
    if compose == "globals_guide":
        guide = MAPAGuide(table, site="latent", globals_guide=AutoNormal(poutine.block(emp, hide=["latent"])))
    else:
        guide = AutoGuideList(emp)
        guide.append(AutoNormal(poutine.block(emp, hide=["latent"])))
        guide.append(MAPAGuide(table, site="latent"))
    elbo = TraceMAPA_ELBO(num_top=N)
    rows = torch.arange(N)
    pyro.set_rng_seed(0)
    draws = torch.tensor([-elbo.loss(emp, guide, X, rows=rows) for _ in range(1500)], dtype=torch.float64)
    prefix = "AutoNormal" if compose == "globals_guide" else "AutoGuideList.0"
    loc = pyro.param(f"{prefix}.locs.sigma").item()
    scale = pyro.param(f"{prefix}.scales.sigma").item()
    expected, log_px = global_exact(enc, dec, X, loc, scale)
    se = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - expected) < 4 * se
    assert expected < log_px


def test_globals_get_gradients_and_train():
    enc, dec = networks()
    X = data()
    emp = empiricalize(global_model(dec), "latent", enc, X)
    pyro.clear_param_store()
    guide = MAPAGuide(
        PosteriorTable.from_data(X, GaussianKernel(0.7)), site="latent",
        globals_guide=AutoNormal(poutine.block(emp, hide=["latent"])),
    )
    svi = SVI(emp, guide, Adam({"lr": 0.05}), TraceMAPA_ELBO(num_top=3))
    rows = torch.arange(N)
    svi.step(X, rows=rows)
    before = pyro.param("AutoNormal.locs.sigma").item()
    for _ in range(20):
        svi.step(X, rows=rows)
    assert pyro.param("AutoNormal.locs.sigma").item() != before


# ---------------------------------------------------------------- bad input, each before any step


def _loss(model, site="latent", table_data=None, rows=torch.arange(4), args=None, **kw):
    enc, dec = networks()
    X = data()
    emp = empiricalize(model(dec), site, kw.pop("encoder", enc), X, **kw)
    table = PosteriorTable.from_data(X if table_data is None else table_data, GaussianKernel(0.7))
    guide = MAPAGuide(table, site=site, plate=kw.get("plate", "data"))
    args = (X[rows],) if args is None else args
    return TraceMAPA_ELBO(num_top=2).loss(emp, guide, *args, rows=rows)


def test_bad_site_name():
    with pytest.raises(ValueError, match="no sample site named 'z'"):
        _loss(tutorial_model, site="z")


def test_site_outside_the_plate():
    def model(dec):
        def m(x):
            z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(dec(z), SIGMA).to_event(1), obs=x)
        return m

    with pytest.raises(ValueError, match="not inside a plate named 'data'"):
        _loss(model)


def test_wrong_plate_name():
    with pytest.raises(ValueError, match="not inside a plate named 'batch'"):
        _loss(tutorial_model, plate="batch")


def test_discrete_site():
    def model(dec):
        def m(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("latent", dist.Categorical(logits=torch.zeros(3)))
                pyro.sample("obs", dist.Normal(dec(z.float().unsqueeze(-1).expand(-1, d)), SIGMA).to_event(1), obs=x)
        return m

    with pytest.raises(ValueError, match="is discrete"):
        _loss(model)


def test_site_without_event_shape():
    def model(dec):
        def m(x):
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("latent", dist.Normal(torch.zeros(d), 1.0))
                pyro.sample("obs", dist.Normal(dec(z), SIGMA).to_event(1).expand([x.shape[0], 1]), obs=x.unsqueeze(-2))
        return m

    with pytest.raises(ValueError, match="must be event-shaped"):
        _loss(model)


def test_rows_missing_for_a_minibatch_plate():
    with pytest.raises(ValueError, match="pass the minibatch's row indices as rows="):
        _loss(tutorial_model, rows=None, args=(data()[:4],))


@pytest.mark.parametrize(
    "rows, match",
    [(torch.tensor([0, 1, N]), "rows"), (torch.tensor([0, -1, 2]), "rows"), (torch.tensor([0.0, 1.0]), "rows")],
)
def test_rows_out_of_range_or_not_integers(rows, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _loss(tutorial_model, rows=rows, args=(data()[:3],))


def test_rows_of_another_length_than_the_plate():
    with pytest.raises(ValueError, match="rows has 3 indices but the model's plate 'data' has size 4"):
        _loss(tutorial_model, rows=torch.tensor([0, 1, 2]), args=(data()[:4],))


def test_subsample_other_than_rows():
    enc, dec = networks()
    X = data()
    emp = empiricalize(subsample_model(dec, X), "latent", enc, X)
    with pytest.raises(ValueError, match="subsamples other rows than rows="):
        emp(torch.tensor([0, 1]), rows=torch.tensor([2, 3]))


def test_encoder_output_of_another_shape():
    with pytest.raises(ValueError, match=r"encoder maps a row of data to shape \(3,\) but .* event shape \(2,\)"):
        _loss(tutorial_model, encoder=nn.Linear(D, 3))


def test_table_built_on_other_data():
    with pytest.raises(ValueError, match="different data|other data|built on"):
        _loss(tutorial_model, table_data=data(seed=7))


def test_global_latent_without_a_guide():
    with pytest.raises(ValueError, match="a global latent needs a guide"):
        _loss(global_model)


@pytest.mark.parametrize(
    "args, error",
    [((tutorial_model, 3), TypeError), ((tutorial_model, "latent"), TypeError)],
)
def test_constructor_types(args, error):
    enc, dec = networks()
    model, site = args
    with pytest.raises(error):
        if isinstance(site, int):
            empiricalize(model(dec), site, enc, data())
        else:
            empiricalize(model(dec), site, "not a module", data())


def test_data_with_nan():
    enc, dec = networks()
    X = data()
    X[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        empiricalize(tutorial_model(dec), "latent", enc, X)
