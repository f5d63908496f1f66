"""The table's distance step against a float64 reference Σ (a - b)², far from the origin and at any scale.

The references here never use the expansion ``||a||² + ||b||² - 2 a·b``: they take the exact
differences of the very values the table saw (float32 data are upcast first), divide by the
bandwidth before squaring (so ``h²`` never under- or overflows) and normalize in float64.

Tolerance: the builder promises at most ``TOLERANCE`` = 1e-3 nats of error in log κ from its
distance step (:mod:`pyro_mapa.table.distances`), so at most about 2e-3 in log q after
normalizing; float32 storage adds a relative 6e-8. We check every entry with
q ≥ 1e-20 (log q ≥ -46) to ``2e-3 + 1e-5·|log q|`` and the row's total variation to 2e-3.
The bugs these tests guard against err by 0.2-1 in total variation (mean TV 0.95 and 0.23 in
the issue's two reproductions) or give NaN.
"""

import math

import pytest
import torch

from pyro_mapa import BernoulliKernel, GaussianKernel, PosteriorTable, ProximityKernel
from pyro_mapa.table.distances import TOLERANCE, DistancePlan


def reference_log_q(x, h):
    """``(N, N)`` float64 log q from the exact differences of ``x`` in units of ``h``."""
    u = x.double() / h
    d2 = ((u.unsqueeze(1) - u.unsqueeze(0)) ** 2).sum(-1)
    return torch.log_softmax(-0.5 * d2, dim=1)


def dense(table):
    out = torch.full((table.num_rows, table.num_categories), -math.inf, dtype=torch.float64)
    return out.scatter_(1, table.indices, table.log_probs.double())


def assert_matches(table, ref, tol=2e-3):
    """Kept entries equal ``ref`` (entries of q ≥ 1e-20 to ``tol + 1e-5 |log q|``, rows in total
    variation to ``tol``), and a truncated row keeps its top M: nothing dropped beats a kept entry."""
    got = dense(table)
    assert not torch.isnan(got).any()
    kept = torch.zeros_like(got, dtype=torch.bool).scatter_(1, table.indices, True)
    seen = kept & (ref >= -46)
    err = (got - ref).abs()[seen]
    assert float(err.max()) <= tol + 1e-5 * float(ref[seen].abs().max()), float(err.max())
    tv = 0.5 * ((got.exp() - ref.exp()).abs() * kept).sum(1)
    assert float(tv.max()) <= tol, float(tv.max())
    if table.support_size < table.num_categories:
        floor = ref.masked_fill(~kept, math.inf).min(1).values
        best_dropped = ref.masked_fill(kept, -math.inf).max(1).values
        assert bool((best_dropped <= floor + tol).all())


def test_the_issue_reproductions_are_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([40.7, -74.0]) + 0.01 * torch.randn(200, 2, generator=g)
    t = PosteriorTable.from_data(x, GaussianKernel(0.001))
    assert torch.equal(t.indices[:, 0], torch.arange(200)), "a point's own entry comes first"
    assert_matches(t, reference_log_q(x, 0.001))
    x = 1000 + torch.randn(200, 4, generator=g)
    assert_matches(PosteriorTable.from_data(x, GaussianKernel(0.1)), reference_log_q(x, 0.1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e20])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e3, 1e4])
def test_offsets_and_scales_match_the_float64_reference(offset, scale, dtype):
    g = torch.Generator().manual_seed(int(offset) + 7)
    x = (scale * (offset + torch.randn(60, 3, generator=g, dtype=torch.float64))).to(dtype)
    h = 0.3 * scale
    ref = reference_log_q(x, h)
    assert_matches(PosteriorTable.from_data(x, GaussianKernel(h)), ref)
    assert_matches(PosteriorTable.from_data(x, GaussianKernel(h), chunk_size=7, max_support=9), ref)


@pytest.mark.parametrize(
    "x, h",
    [
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), 1e-25),  # once 0 · -inf at the own entry
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(2)) * 1e20, 1e20),  # squares overflow float32
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(3)) * 1e-30, 1e-30),  # squares underflow
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), 1e-160),  # h² underflows
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(5)), 1e-200),  # h² is 0 (was ZeroDivisionError)
        (torch.randn(50, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 1e300, 1e300),
    ],
)
def test_once_all_nan_tables_are_exact(x, h):
    table = PosteriorTable.from_data(x, GaussianKernel(h))
    assert_matches(table, reference_log_q(x, h))
    assert torch.isfinite(table.log_normalizer).all()


def test_tiny_bandwidth_puts_all_mass_on_the_point_and_its_duplicates():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(8))
    x[5] = x[11]
    table = PosteriorTable.from_data(x, GaussianKernel(1e-25))
    q = dense(table).exp()
    expected = torch.eye(20, dtype=torch.float64)
    expected[5, 11] = expected[11, 5] = expected[5, 5] = expected[11, 11] = 0.5
    assert bool((q[expected == 0] == 0).all())  # exactly no mass elsewhere
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-7)  # log 0.5 rounded to float32


def test_own_distance_is_exactly_zero_on_every_path():
    g = torch.Generator().manual_seed(9)
    x = 1e4 + torch.randn(30, 3, generator=g)
    for h in (10.0, 0.01, 1e-9):  # float32 GEMM, float64 GEMM, direct differences
        plan = DistancePlan(x, GaussianKernel(h))
        block = plan.scaled_sqdist(4, 17)
        assert torch.equal(block.diagonal(4), torch.zeros(13, dtype=plan.dtype))
        assert (block >= 0).all()
        cols = torch.tensor([0, 5, 5, 29])
        sub = plan.scaled_sqdist(4, 17, cols=cols)
        assert float(sub[1, 1]) == 0.0 and float(sub[1, 2]) == 0.0  # row 5 against itself, twice
    paths = [(DistancePlan(x, GaussianKernel(h)).dtype, DistancePlan(x, GaussianKernel(h)).direct)
             for h in (10.0, 0.01, 1e-9)]
    assert paths == [(torch.float32, False), (torch.float64, False), (torch.float64, True)]


def test_the_plan_error_bound_is_honest():
    """The bound that picks the arithmetic: on each path, measured error of the scaled distances ≤ bound."""
    g = torch.Generator().manual_seed(10)
    for offset, h in [(0.0, 1.0), (50.0, 0.5), (1e3, 0.05), (1e3, 1e-6)]:
        x = offset + torch.randn(80, 4, generator=g)
        plan = DistancePlan(x, GaussianKernel(h))
        u = x.double() / h
        exact = ((u.unsqueeze(1) - u.unsqueeze(0)) ** 2).sum(-1)
        err = 0.5 * (plan.scaled_sqdist(0, 80).double() - exact).abs().max()  # in nats of log κ
        assert plan.error_bound <= TOLERANCE
        assert float(err) <= max(plan.error_bound, 1e-9 * float(exact.max())), (offset, h, float(err))


def test_bernoulli_keeps_exact_integer_distances():
    x = (torch.rand(40, 9, generator=torch.Generator().manual_seed(11)) > 0.5).float()
    plan = DistancePlan(x, BernoulliKernel(0.9))
    assert plan.dtype == torch.float32 and not plan.direct
    hamming = (x.unsqueeze(1) != x.unsqueeze(0)).float().sum(-1)
    assert torch.equal(plan.scaled_sqdist(0, 40), hamming)


def test_half_precision_data_give_the_float32_table():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(12))
    for half in (torch.bfloat16, torch.float16):
        xh = x.to(half)
        table = PosteriorTable.from_data(xh, GaussianKernel(0.5))
        same = PosteriorTable.from_data(xh.float(), GaussianKernel(0.5))
        assert table.log_probs.dtype == torch.float32
        assert torch.equal(table.indices, same.indices) and torch.equal(table.log_probs, same.log_probs)
        assert table.fingerprint != same.fingerprint  # the dtype is part of the fingerprint
        table.check_data(xh.float())  # row hashes of float32-rounded values agree


def test_a_table_with_nan_is_refused():
    class Broken(ProximityKernel):
        def log_kernel_from_sqdist(self, sqdist):
            return torch.where(sqdist > 1.0, torch.full_like(sqdist, math.nan), -sqdist)

    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(13))
    with pytest.raises(ValueError, match="NaN log-probabilities in .* row"):
        PosteriorTable.from_data(x, Broken())

    class Infinite(ProximityKernel):
        def log_kernel_from_sqdist(self, sqdist):
            return torch.full_like(sqdist, math.inf)

    with pytest.raises(ValueError, match="NaN log-probabilities"):
        PosteriorTable.from_data(x, Infinite())


def test_custom_kernels_without_a_length_scale_are_exact_too():
    class Laplacian(ProximityKernel):
        def log_kernel_from_sqdist(self, sqdist):
            return -sqdist.sqrt() / 0.05

    x = 500 + torch.randn(40, 2, generator=torch.Generator().manual_seed(14))
    table = PosteriorTable.from_data(x, Laplacian())
    d = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert_matches(table, torch.log_softmax(-d / 0.05, 1))


def test_public_kernel_helpers_are_exact_far_from_the_origin():
    from pyro_mapa.table import squared_distances

    x = 1e4 + torch.randn(9, 3, generator=torch.Generator().manual_seed(15))
    exact = ((x.double().unsqueeze(1) - x.double().unsqueeze(0)) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, x).double(), exact, rtol=1e-6, atol=0)
    assert torch.equal(squared_distances(x, x).diagonal(), torch.zeros(9))
    k = GaussianKernel(1e-200)  # h² underflows: once a ZeroDivisionError
    lk = k.log_kernel(x, x)
    assert torch.equal(lk.diagonal(), torch.zeros(9)) and bool((lk.fill_diagonal_(-math.inf) == -math.inf).all())
    d2 = torch.tensor([0.0, 1e-30, 4.0])
    torch.testing.assert_close(GaussianKernel(1e-20).log_kernel_from_sqdist(d2), torch.tensor([0.0, -5e9, -math.inf]))
    assert torch.equal(GaussianKernel(1e-200).log_kernel_from_sqdist_(d2.clone()), torch.tensor([0.0, -math.inf, -math.inf]))
