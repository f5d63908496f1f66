"""The remainder samplers as pure tensor functions, against exact answers (docs/method.md §5)."""

import math

import pytest
import torch

from pyro_mapa.table.sampling import (
    log_inclusion,
    log_suffix_mass,
    remainder_log_probs,
    sample_with_replacement,
    sample_without_replacement,
)

F64 = torch.float64
# One sorted row of a table (probabilities 0.4, 0.25, 0.2, 0.1, 0.05): remainder after K=1 is 0.6.
ROW = torch.tensor([[0.4, 0.25, 0.2, 0.1, 0.05]], dtype=F64).log()


def test_remainder_log_probs_is_the_renormalized_tail():
    lp = torch.cat([ROW, torch.tensor([[0.7, 0.1, 0.1, 0.06, 0.04]], dtype=F64).log()])
    for k in (0, 1, 3, 4):
        tail = lp[:, k:].exp()
        expected = (tail / tail.sum(1, keepdim=True)).log()
        torch.testing.assert_close(remainder_log_probs(lp, k), expected, rtol=0, atol=1e-12)
        # A precomputed remainder mass gives the same answer.
        torch.testing.assert_close(remainder_log_probs(lp, k, lp[:, k:].logsumexp(1)), expected, rtol=0, atol=1e-12)


def test_remainder_log_probs_uniform_fallback_only_for_a_dead_row():
    lp = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf], [-0.1, -2.0, -3.0, -4.0]], dtype=F64)
    out = remainder_log_probs(lp, 1)
    torch.testing.assert_close(out[0], torch.full((3,), -math.log(3), dtype=F64), rtol=0, atol=1e-12)
    tail = lp[1, 1:].exp()
    torch.testing.assert_close(out[1], (tail / tail.sum()).log(), rtol=0, atol=1e-12)
    # A dead row with a one-entry remainder: the uniform proposal puts probability 1 on it.
    assert remainder_log_probs(lp[:1], 3).tolist() == [[0.0]]


@pytest.mark.parametrize("log_x", [-40.0, -12.0, -5.5, -5.0, -4.5, -1.0, 0.0, 1.0, 3.0, 30.0])
def test_log_inclusion_matches_float64_closed_form(log_x):
    x = math.exp(log_x)
    expected = math.log(-math.expm1(-x))  # log(1 - exp(-x)), float64
    got = float(log_inclusion(torch.tensor([log_x], dtype=F64)))
    # Below log x = -5 the series log x - x/2 is used: its error x^2/24 is < 2e-6 there (and
    # would be 5e-6 at log x = -4.5, so the switch point is pinned too).
    assert got == pytest.approx(expected, rel=0, abs=2e-6 if log_x < -5 else 1e-12)


def test_log_inclusion_limits():
    out = log_inclusion(torch.tensor([math.inf, -math.inf], dtype=F64))
    assert out.tolist() == [0.0, -math.inf]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_log_suffix_mass_is_each_tail_sum(chunk_size):
    lp = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(1))  # more rows than columns
    expected = torch.stack([lp[:, j:].logsumexp(1) for j in range(5)], 1)
    torch.testing.assert_close(log_suffix_mass(lp, chunk_size), expected, rtol=0, atol=1e-12)


def test_with_replacement_inverse_cdf_is_exact_on_a_uniform_grid():
    """Uniforms on a fine midpoint grid land on position j with frequency q_j / mass to within 1/G."""
    k, g = 1, 6000
    suffix = log_suffix_mass(ROW, 1)
    u = ((torch.arange(g, dtype=F64) + 0.5) / g).unsqueeze(0)
    idx_table = torch.tensor([[10, 11, 12, 13, 14]])
    idx, log_q = sample_with_replacement(idx_table, ROW, suffix, torch.tensor([0]), k, g, u)
    freq = torch.bincount(idx[0] - 10, minlength=5).double() / g
    expected = torch.tensor([0.0, 0.25, 0.2, 0.1, 0.05], dtype=F64) / 0.6
    torch.testing.assert_close(freq, expected, rtol=0, atol=2.0 / g)
    torch.testing.assert_close(log_q[0], expected.log()[idx[0] - 10], rtol=0, atol=1e-12)
    # u -> 1 is the first remainder entry, u -> 0 the last one.
    idx, _ = sample_with_replacement(idx_table, ROW, suffix, torch.tensor([0]), k, 2,
                                     torch.tensor([[1.0, 1e-9]], dtype=F64))
    assert idx.tolist() == [[11, 14]]


def test_with_replacement_reads_the_requested_rows():
    lp = torch.cat([ROW, torch.tensor([[0.7, 0.1, 0.1, 0.06, 0.04]], dtype=F64).log()])
    idx_table = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    u = torch.full((2, 1), 1.0, dtype=F64)  # first remainder entry of each row
    idx, log_q = sample_with_replacement(idx_table, lp, log_suffix_mass(lp, 8), torch.tensor([1, 0]), 2, 1, u)
    assert idx.tolist() == [[7], [2]]
    torch.testing.assert_close(log_q[:, 0], torch.tensor([0.1 / 0.2, 0.2 / 0.35], dtype=F64).log())


def test_with_replacement_dead_row_is_uniform_over_the_remainder():
    lp = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf, -math.inf]], dtype=F64)
    u = ((torch.arange(400, dtype=F64) + 0.5) / 400).unsqueeze(0)
    idx, log_q = sample_with_replacement(torch.arange(5).unsqueeze(0), lp, log_suffix_mass(lp, 1),
                                         torch.tensor([0]), 1, 400, u)
    assert torch.equal(torch.bincount(idx[0], minlength=5), torch.tensor([0, 100, 100, 100, 100]))
    torch.testing.assert_close(log_q, torch.full((1, 400), -math.log(4), dtype=F64), rtol=0, atol=1e-12)
    # u = 1 exactly (the samplers draw in (0, 1]) is the last entry, not one past it.
    idx, _ = sample_with_replacement(torch.arange(5).unsqueeze(0), lp, log_suffix_mass(lp, 1),
                                     torch.tensor([0]), 1, 1, torch.ones(1, 1, dtype=F64))
    assert idx.tolist() == [[4]]


def _priority_estimates(log_q, a, s, draws, seed=0):
    """``draws`` independent priority-sampling estimates of sum_i a_i (one row each)."""
    b = draws
    rest = log_q.expand(b, -1)
    u = torch.rand(b, rest.shape[1], dtype=F64, generator=torch.Generator().manual_seed(seed))
    idx, log_incl = sample_without_replacement(torch.arange(rest.shape[1]).expand(b, -1), rest, s, u)
    return (a[idx] * (-log_incl).exp()).sum(1), idx, log_incl


@pytest.mark.parametrize("s", [1, 2, 3])
def test_without_replacement_priority_estimate_is_unbiased(s):
    """E[sum_{top-s} a_i / pi_i(kappa)] = sum_i a_i, for a non-uniform q and a, to within 4 se << 5 %."""
    q = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05], dtype=F64)
    a = torch.tensor([0.2, 3.0, 0.5, 1.0, 2.0], dtype=F64)
    est, idx, _ = _priority_estimates(q.log().unsqueeze(0), a, s, 200_000, seed=s)
    exact = float(a.sum())
    se = float(est.std() / math.sqrt(len(est)))
    assert se < 0.01 * exact
    assert abs(float(est.mean()) - exact) < 4 * se
    assert idx.shape == (200_000, s)
    if s > 1:  # distinct indices in each draw
        assert bool((idx[:, 0] != idx[:, 1]).all())


def test_without_replacement_first_draw_follows_q():
    """The top perturbed entry is a draw from q (Gumbel-max): frequencies within 4 se."""
    q = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05], dtype=F64)
    _, idx, _ = _priority_estimates(q.log().unsqueeze(0), torch.ones(5, dtype=F64), 2, 100_000, seed=7)
    freq = torch.bincount(idx[:, 0], minlength=5).double() / 100_000
    se = (q * (1 - q) / 100_000).sqrt()
    assert bool(((freq - q).abs() < 4 * se).all())


def test_without_replacement_inclusion_given_threshold():
    """Fixed uniforms: the kept entries are the top-s perturbed values and pi_i uses the (s+1)-th."""
    log_q = torch.tensor([[0.5, 0.3, 0.2]], dtype=F64).log()
    u = torch.tensor([[0.5, 0.9, 0.2]], dtype=F64)
    gumbel = -torch.log(-torch.log(u))
    pert = log_q + gumbel  # 0.5 -> -0.327, 0.3 -> 1.05, 0.2 -> -2.08
    idx, log_incl = sample_without_replacement(torch.tensor([[7, 8, 9]]), log_q, 1, u.clone())
    assert idx.tolist() == [[8]]
    kappa = float(pert[0, 0])
    expected = math.log(-math.expm1(-math.exp(math.log(0.3) - kappa)))
    assert float(log_incl[0, 0]) == pytest.approx(expected, rel=1e-12)
    idx, log_incl = sample_without_replacement(torch.tensor([[7, 8, 9]]), log_q, 2, u.clone())
    assert idx.tolist() == [[8, 7]]
    kappa = float(pert[0, 2])
    expected = [math.log(-math.expm1(-math.exp(math.log(p) - kappa))) for p in (0.3, 0.5)]
    torch.testing.assert_close(log_incl[0], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def test_without_replacement_covering_the_remainder_is_exact_and_zero_prob_is_weight_zero():
    log_q = torch.tensor([[0.7, 0.3, 0.0]], dtype=F64).log()
    u = torch.rand(1, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    idx, log_incl = sample_without_replacement(torch.tensor([[4, 5, 6]]), log_q, 5, u)
    assert idx.tolist() == [[4, 5, 6]]
    assert log_incl.tolist() == [[0.0, 0.0, math.inf]]
