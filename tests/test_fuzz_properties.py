"""Fuzzed inputs (hypothesis): every call refuses with a documented error or equals an exact float64 reference.

Each family draws data sets far from the origin (offsets 0 or 10^2-10^4 times the spread, in a
random direction), at scales 10^-30 to 10^20, with duplicated rows, 2-24 rows, 1-4 columns and
float32 or float64, and compares the library's answer with a float64 reference that never uses
the cancelling expansion ``||a||² + ||b||² - 2 a·b`` (exact differences of the very values the
library saw, divided by the bandwidth before squaring). ``tests/table/test_properties.py``
covers the well-scaled regime (chunking, truncation, the bound below the exact value); this
module covers the numerically hostile one.

Tolerances (what each check could miss):

- tables: the builder bounds its distance step's error in log κ by 1e-3 nats
  (``pyro_mapa.table.distances.TOLERANCE``), so log q is within ~2e-3 (κ and the normalizer)
  plus float32 storage (relative 6e-8): entries with q ≥ 1e-20 are checked to
  ``2e-3 + 1e-5·|log q|`` and each row's total variation to 2e-3. The bug this guards
  against errs by 0.2-0.95 in total variation or gives NaN.
- the bound at K = N: a float32 sum of per-point log-likelihoods of magnitude L rounds at
  ~1e-7·L per term: relative 1e-5 (float32) or 1e-9 (float64) of the total, plus 1e-4 absolute.
- KDE: float64 internally; a float32 result is rounded at relative 6e-8; an ill-conditioned
  (but accepted) covariance loses ~cond·eps₆₄ ≤ 1e-7: relative 1e-6.
- copula: knots and the knot round trip are exact; linear interpolation between knots to
  relative 1e-6 (float32) / 1e-12 (float64) of the knot spacing.

Determinism: ``derandomize=True`` and no example database, so CI runs the same examples.
"""

import math

import pyro
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyro_mapa import (
    AmortizedCodebook,
    BernoulliKernel,
    EmpiricalizedModel,
    GaussianKernel,
    MAPAGuide,
    NonFiniteLossError,
    NormalLikelihood,
    PosteriorTable,
    TraceMAPA_ELBO,
    mlp,
)
from pyro_mapa.priors import GaussianCopulaPrior, KDEPrior

F64 = torch.float64
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
TABLE_EXAMPLES, BERNOULLI_EXAMPLES, BOUND_EXAMPLES, KDE_EXAMPLES, COPULA_EXAMPLES = 300, 100, 80, 200, 150

datasets = st.fixed_dictionaries(
    {
        "n": st.integers(2, 24),
        "d": st.integers(1, 4),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "offset": st.sampled_from([0.0, 1e2, 1e3, 1e4]),
        "scale": st.sampled_from([1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e20]),
        "duplicates": st.integers(0, 6),
        "seed": st.integers(0, 2**16),
    }
)


def make_data(p, rows=None):
    """``scale · (offset · direction + N(0, I))`` with some rows copied onto others, in ``dtype``."""
    g = torch.Generator().manual_seed(p["seed"])
    n = rows or p["n"]
    direction = torch.nn.functional.normalize(torch.randn(p["d"], generator=g, dtype=F64), dim=0)
    base = p["offset"] * direction + torch.randn(n, p["d"], generator=g, dtype=F64)
    for _ in range(min(p["duplicates"], n - 1)):
        i, j = torch.randint(n, (2,), generator=g).tolist()
        base[i] = base[j]
    return (p["scale"] * base).to(p["dtype"])


def reference_log_q(x, h):
    u = x.to(F64) / h
    d2 = ((u.unsqueeze(1) - u.unsqueeze(0)) ** 2).sum(-1)
    return torch.log_softmax(-0.5 * d2, dim=1)


def assert_table_matches(table, ref, tol=2e-3):
    got = torch.full_like(ref, -math.inf).scatter_(1, table.indices, table.log_probs.to(F64))
    assert not torch.isnan(got).any() and torch.isfinite(table.log_normalizer).all()
    kept = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, table.indices, True)
    seen = kept & (ref >= -46)
    err = float((got - ref).abs()[seen].max())
    assert err <= tol + 1e-5 * float(ref[seen].abs().max()), err
    tv = 0.5 * ((got.exp() - ref.exp()).abs() * kept).sum(1)
    assert float(tv.max()) <= tol, float(tv.max())
    if table.support_size < table.num_categories:  # the top M are kept: nothing dropped beats a kept entry
        floor = ref.masked_fill(~kept, math.inf).min(1).values
        assert bool((ref.masked_fill(kept, -math.inf).max(1).values <= floor + tol).all())


@settings(max_examples=TABLE_EXAMPLES, **FUZZ)
@given(datasets, st.floats(1e-3, 1e2), st.data())
def test_gaussian_table_equals_the_float64_reference(p, h_rel, data):
    x = make_data(p)
    h = p["scale"] * h_rel
    m = data.draw(st.one_of(st.none(), st.integers(1, p["n"])), label="max_support")
    chunk = data.draw(st.one_of(st.none(), st.integers(1, p["n"])), label="chunk_size")
    table = PosteriorTable.from_data(x, GaussianKernel(h), max_support=m, chunk_size=chunk)
    assert table.log_probs.dtype == p["dtype"]
    assert_table_matches(table, reference_log_q(x, h))


@settings(max_examples=BERNOULLI_EXAMPLES, **FUZZ)
@given(st.integers(2, 24), st.integers(1, 12), st.floats(0.55, 0.99), st.sampled_from([torch.float32, F64]),
       st.integers(0, 2**16), st.data())
def test_bernoulli_table_is_exact_with_ties_by_column(n, d, rho, dtype, seed, data):
    x = (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.5).to(dtype)
    m = data.draw(st.one_of(st.none(), st.integers(1, n)), label="max_support")
    table = PosteriorTable.from_data(x, BernoulliKernel(rho), max_support=m)
    hamming = (x.unsqueeze(1) != x.unsqueeze(0)).to(F64).sum(-1)
    ref = torch.log_softmax(-hamming * math.log(rho / (1 - rho)), dim=1)
    assert_table_matches(table, ref, tol=1e-5)  # integer distances: only float32 rounding of log q
    # Ties are broken by column index: the exact order is by (distance, column).
    order = torch.argsort(hamming * n + torch.arange(n, dtype=F64), dim=1)[:, : table.support_size]
    assert torch.equal(table.indices, order)


class Affine(torch.nn.Module):
    """``shift + scale · h``: puts a network's O(1) output at the data's offset and scale."""

    def __init__(self, net, shift, scale, inverse=False):
        super().__init__()
        self.net, self.scale, self.inverse = net, scale, inverse
        self.register_buffer("shift", shift)

    def forward(self, h):
        if self.inverse:  # encoder: standardize the data first
            return self.net((h - self.shift) / self.scale)
        return self.shift + self.scale * self.net(h)


def _model(x, sigma, scale, seed):
    torch.manual_seed(seed)
    d, shift = x.shape[1], x.mean(0)
    enc = Affine(mlp(d, 1, (6,)).to(x.dtype), shift, scale, inverse=True)
    dec = Affine(mlp(1, d, (6,)).to(x.dtype), shift, scale)
    return EmpiricalizedModel(AmortizedCodebook(enc, dec, x), NormalLikelihood(sigma))


small_datasets = datasets.map(lambda p: dict(p, n=2 + p["n"] % 11))  # N ≤ 12: Pyro's per-step cost


@settings(max_examples=BOUND_EXAMPLES, **FUZZ)
@given(small_datasets, st.floats(0.05, 3.0), st.floats(0.01, 10.0))
def test_bound_at_k_equals_n_is_the_enumerated_log_likelihood(p, sigma_rel, h_rel):
    """MAPA at K = N, S = 0 sums all N terms p(x_n, c = i): the exact empiricalized log-likelihood,
    log p(x_n) = logsumexp_i [log N(x_n; f(g(x_i)), σ²I)] - log N, enumerated here in float64
    from the decoded means (which sit at the data's offset and scale)."""
    pyro.clear_param_store()
    x = make_data(p)
    sigma = p["scale"] * sigma_rel
    model = _model(x, sigma, p["scale"], p["seed"])
    guide = MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(p["scale"] * h_rel)))
    with torch.no_grad():
        means = model.codebook.decoder(model.codebook.codes()).to(F64)  # (N, D) decoded codes
    u = (x.to(F64).unsqueeze(1) - means.unsqueeze(0)) / sigma
    log_lik = -0.5 * (u * u).sum(-1) - p["d"] * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    exact = float((torch.logsumexp(log_lik, 1) - math.log(p["n"])).sum())
    try:
        bound = -TraceMAPA_ELBO(p["n"], 0).loss(model, guide)
    except NonFiniteLossError:
        # Documented refusal, allowed only where float32 cannot hold the likelihood's terms:
        # σ² or (x - μ)² outside float32's normal range (the Normal density is computed as (x - μ)² / σ²).
        info = torch.finfo(x.dtype)
        sq = (x.to(F64).unsqueeze(1) - means.unsqueeze(0)) ** 2
        out_of_range = not info.tiny <= sigma * sigma <= info.max or float(sq.max()) > info.max
        assert x.dtype == torch.float32 and out_of_range, (sigma, float(sq.max()))
        event("bound: refused (NonFiniteLossError: float32 cannot hold sigma^2 or (x - mu)^2)")
        return
    event("bound: returned")
    rel = 1e-5 if x.dtype == torch.float32 else 1e-9
    assert math.isclose(bound, exact, rel_tol=rel, abs_tol=1e-4), (bound, exact)


def reference_kde(codes, z, factor):
    c = codes.to(F64)
    centred = c - c.mean(0)
    cov = factor**2 * centred.T @ centred / (len(c) - 1)
    mvn = torch.distributions.MultivariateNormal(c, covariance_matrix=cov)
    return torch.logsumexp(mvn.log_prob(z.to(F64).unsqueeze(-2)), -1) - math.log(len(c))


@settings(max_examples=KDE_EXAMPLES, **FUZZ)
@given(datasets, st.sampled_from([None, "silverman", 0.5]))
def test_kde_prior_refuses_degenerate_codes_or_equals_the_float64_density(p, bandwidth):
    codes = make_data(p)
    z = make_data(dict(p, seed=p["seed"] + 1, duplicates=0), rows=5)
    y = codes.to(F64) - codes.to(F64).mean(0)
    y = y / y.abs().amax(0).clamp(min=1e-300)
    eig = torch.linalg.eigvalsh(y.T @ y) if len(y) > 1 else torch.zeros(1, dtype=F64)
    try:
        kde = KDEPrior(codes, bandwidth)
    except ValueError as e:
        assert "singular covariance" in str(e) or "at least 2" in str(e), e
        # Refused only when the codes really span fewer than d dimensions (up to their own rounding).
        assert float(eig[0]) <= 1e-9 * float(eig[-1]), (eig, str(e))
        event("kde: refused (singular covariance)")
        return
    event("kde: returned")
    assert float(eig[0]) > 1e-16 * float(eig[-1])
    got = kde.log_prob(z)
    assert got.dtype == p["dtype"]
    ref = reference_kde(codes, z, kde.factor)
    cond = float(eig[-1] / eig[0])
    rtol = max(1e-6, 1e-14 * cond)  # an ill-conditioned covariance loses ~cond·eps in either computation
    torch.testing.assert_close(got.to(F64), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


@settings(max_examples=COPULA_EXAMPLES, **FUZZ)
@given(datasets, st.floats(-4.0, 4.0))
def test_copula_knots_and_interpolation_are_exact(p, u0):
    codes = make_data(dict(p, d=1)).reshape(-1)
    prior = GaussianCopulaPrior(codes)
    n = len(codes)
    raw = torch.special.ndtri(torch.arange(1, n + 1, dtype=F64) / (n + 1))
    torch.testing.assert_close(prior.u_knots.to(F64), (raw - raw.mean()) / raw.std(),
                               rtol=0, atol=1e-6 if p["dtype"] == torch.float32 else 1e-12)
    assert torch.equal(prior.z_knots, torch.sort(codes).values)
    assert torch.equal(prior.transform(prior.u_knots), torch.sort(codes).values)
    # Between knots: linear interpolation (extended linearly past the ends), monotone.
    uk, zk = prior.u_knots.to(F64), prior.z_knots.to(F64)
    j = int(torch.searchsorted(uk, torch.tensor(u0, dtype=F64)).clamp(1, n - 1))
    t = (u0 - uk[j - 1]) / (uk[j] - uk[j - 1])
    expected = zk[j - 1] + t * (zk[j] - zk[j - 1])
    got = prior.transform(torch.tensor([u0], dtype=p["dtype"])).to(F64)[0]
    spread = float(zk[j] - zk[j - 1]) * max(1.0, abs(float(t)))
    tol = (1e-6 if p["dtype"] == torch.float32 else 1e-12) * spread + 4 * float(torch.finfo(p["dtype"]).eps) * abs(float(expected))
    assert abs(float(got - expected)) <= tol
    grid = prior.transform(torch.linspace(-5, 5, 101, dtype=p["dtype"]))
    assert bool((grid[1:] >= grid[:-1]).all()) and torch.isfinite(grid).all()
