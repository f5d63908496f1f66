"""TableCategorical (a sparse categorical row) and MAPAGuide (the fixed posterior over code indices)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from conftest import make_empiricalized
from pyro_mapa import GaussianKernel, MAPAGuide, PosteriorTable, TableCategorical

N = 10
NEG_INF = -math.inf


# ---------------------------------------------------------------------------------------------
# TableCategorical
# ---------------------------------------------------------------------------------------------
def example_rows():
    """Three rows over N = 10 categories with disjoint supports of size 3 and unnormalized weights."""
    indices = torch.tensor([[2, 7, 0], [9, 4, 5], [1, 3, 8]])
    weights = torch.tensor([[5.0, 3.0, 2.0], [1.0, 1.0, 2.0], [0.5, 7.0, 2.5]], dtype=torch.float64)
    return indices, weights


def dense_probs(indices, weights, n=N):
    """Reference: renormalized weights scattered into a dense (B, N) matrix."""
    p = weights / weights.sum(-1, keepdim=True)
    return torch.zeros(indices.shape[:-1] + (n,), dtype=weights.dtype).scatter(-1, indices, p)


def test_log_prob_is_renormalized_row_weight_and_minus_inf_off_support():
    indices, weights = example_rows()
    # Logits shifted by an arbitrary per-row constant: only the ratios matter.
    logits = weights.log() + torch.tensor([[3.0], [-11.0], [0.25]], dtype=torch.float64)
    d = TableCategorical(indices, logits, N)
    assert d.batch_shape == (3,)
    assert d.event_shape == ()
    ref = dense_probs(indices, weights)
    for j in range(N):
        lp = d.log_prob(torch.full((3,), j))
        for b in range(3):
            if ref[b, j] > 0:
                assert float(lp[b]) == pytest.approx(math.log(float(ref[b, j])), abs=1e-12)
            else:
                assert float(lp[b]) == NEG_INF
    # The probabilities over all N categories sum to one per row.
    all_lp = torch.stack([d.log_prob(torch.full((3,), j)) for j in range(N)], -1)
    torch.testing.assert_close(all_lp.exp().sum(-1), torch.ones(3, dtype=torch.float64))


def test_log_prob_broadcasts_sample_shape():
    indices, weights = example_rows()
    d = TableCategorical(indices, weights.log(), N)
    values = torch.tensor([[2, 4, 3], [0, 9, 9], [7, 5, 1]])  # (sample=3, batch=3)
    lp = d.log_prob(values)
    assert lp.shape == (3, 3)
    ref = dense_probs(indices, weights).log()
    expected = torch.stack([ref[torch.arange(3), values[s]] for s in range(3)])
    torch.testing.assert_close(lp, expected)
    # Row 0 has weights (5, 3, 2) on indices (2, 7, 0): value 0 has probability 0.2.
    assert float(lp[1, 0]) == pytest.approx(math.log(0.2))


def test_log_prob_value_out_of_range_raises_under_validation():
    indices, weights = example_rows()
    d = TableCategorical(indices, weights.log(), N, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.full((3,), N))


def test_mean_and_variance_match_dense():
    indices, weights = example_rows()
    d = TableCategorical(indices, weights.log(), N)
    p = dense_probs(indices, weights)
    cats = torch.arange(N, dtype=torch.float64)
    mean = (p * cats).sum(-1)
    var = (p * (cats - mean.unsqueeze(-1)) ** 2).sum(-1)
    torch.testing.assert_close(d.mean, mean)
    torch.testing.assert_close(d.variance, var)


def test_sample_frequencies_match_probabilities():
    torch.manual_seed(0)
    indices, weights = example_rows()
    d = TableCategorical(indices, weights.log(), N)
    n = 20000
    draws = d.sample(torch.Size([n]))
    assert draws.shape == (n, 3)
    assert draws.dtype == torch.long
    ref = dense_probs(indices, weights)
    for b in range(3):
        freq = torch.bincount(draws[:, b], minlength=N).double() / n
        p = ref[b]
        se = (p * (1 - p) / n).sqrt()
        # Off-support frequencies are exactly zero; on-support within 5 binomial SEs.
        assert torch.all(freq[p == 0] == 0)
        on = p > 0
        assert torch.all((freq[on] - p[on]).abs() <= 5 * se[on]), (b, freq, p)


def test_sample_layout_with_2d_batch_and_sample_shape():
    # Disjoint supports per batch element reveal any mixing-up of the batch layout.
    torch.manual_seed(1)
    indices = torch.arange(24).reshape(2, 3, 4)  # row (a, b) owns {12a + 4b, ..., 12a + 4b + 3}
    logits = torch.randn(2, 3, 4)
    d = TableCategorical(indices, logits, 24)
    assert d.batch_shape == (2, 3)
    assert d.sample().shape == (2, 3)
    x = d.sample(torch.Size([5, 7]))
    assert x.shape == (5, 7, 2, 3)
    owner = torch.div(x, 4, rounding_mode="floor")  # = 3a + b
    expected = (3 * torch.arange(2).view(2, 1) + torch.arange(3)).expand_as(owner)
    assert torch.equal(owner, expected)
    assert torch.isfinite(d.log_prob(x)).all()


def test_sample_with_empty_batch_shape():
    torch.manual_seed(2)
    d = TableCategorical(torch.tensor([4, 6]), torch.tensor([0.0, math.log(3.0)]), N)
    assert d.batch_shape == ()
    assert d.sample().shape == ()
    x = d.sample(torch.Size([4000]))
    assert x.shape == (4000,)
    assert set(x.unique().tolist()) == {4, 6}
    p6 = float((x == 6).double().mean())
    assert abs(p6 - 0.75) <= 5 * math.sqrt(0.75 * 0.25 / 4000)


def test_expand_batch_shapes_and_values():
    indices, weights = example_rows()
    d = TableCategorical(indices, weights.log(), N)
    e = d.expand(torch.Size([5, 3]))
    assert isinstance(e, TableCategorical)
    assert e.batch_shape == (5, 3)
    assert e.num_categories == N
    values = torch.tensor([2, 4, 8])
    torch.testing.assert_close(e.log_prob(values), d.log_prob(values).expand(5, 3))
    assert e.sample().shape == (5, 3)
    assert e.sample(torch.Size([2])).shape == (2, 5, 3)
    # From an empty batch shape.
    s = TableCategorical(torch.tensor([1, 2]), torch.tensor([0.0, 0.0]), N)
    s4 = s.expand((4,))
    assert s4.batch_shape == (4,)
    torch.testing.assert_close(s4.log_prob(torch.tensor([1, 2, 3, 1])), torch.tensor([-math.log(2)] * 2 + [NEG_INF] + [-math.log(2)]))


def test_expand_inside_a_plate():
    # pyro.plate expands a batch-shape-() distribution to the plate size.
    d = TableCategorical(torch.tensor([1, 2]), torch.tensor([0.0, 0.0]), N)
    with pyro.plate("p", 6):
        tr = poutine.trace(lambda: pyro.sample("v", d)).get_trace()
    site = tr.nodes["v"]
    assert site["fn"].batch_shape == (6,)
    assert site["value"].shape == (6,)
    assert set(site["value"].tolist()) <= {1, 2}


def test_mismatched_indices_and_logits_raise():
    with pytest.raises(ValueError, match=r"indices \(1, 3\) and logits \(1, 2\) differ"):
        TableCategorical(torch.tensor([[1, 2, 3]]), torch.zeros(1, 2), N)


# ---------------------------------------------------------------------------------------------
# MAPAGuide
# ---------------------------------------------------------------------------------------------
NUM = 12


def setup(max_support=None):
    model, x, lik = make_empiricalized(n=NUM)
    table = PosteriorTable.from_data(x, GaussianKernel(0.5), max_support=max_support)
    return model, x, table


def dense_table(table):
    """Dense (R, N) log q, -inf outside each row's stored support, renormalized over that support."""
    lp = table.log_probs.double()
    lp = lp - lp.logsumexp(-1, keepdim=True)
    out = torch.full((table.num_rows, table.num_categories), NEG_INF, dtype=torch.float64)
    return out.scatter(1, table.indices, lp)


def check_guide_site(trace, table, idx):
    """The guide's index site: shape, support, and log_prob = the table's rows for the model's batch."""
    assert torch.equal(trace.nodes["data"]["value"], idx)
    site = trace.nodes["c"]
    assert site["type"] == "sample" and not site["is_observed"]
    assert site["value"].shape == idx.shape
    assert site["value"].dtype == torch.long
    fn = site["fn"]
    assert isinstance(fn, TableCategorical)
    assert fn.batch_shape == idx.shape
    ref = dense_table(table)[idx]  # (B, N)
    got = torch.stack([fn.log_prob(torch.full(idx.shape, j)) for j in range(table.num_categories)], -1)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite].double(), ref[finite], rtol=1e-5, atol=1e-5)
    # The sampled values lie in the support of their own rows.
    assert torch.isfinite(ref.gather(1, site["value"].unsqueeze(1))).all()


IDX = torch.tensor([3, 0, 7, 11, 5])


def model_subsample(model, idx):
    return poutine.trace(model).get_trace(idx).nodes["data"]["value"]


def test_guide_via_create_plates():
    model, x, table = setup()
    guide = MAPAGuide(
        table, "c", "data", create_plates=lambda batch_idx=None: pyro.plate("data", NUM, subsample=batch_idx)
    )
    tr = poutine.trace(guide).get_trace(IDX)
    assert torch.equal(tr.nodes["data"]["value"], model_subsample(model, IDX))
    check_guide_site(tr, table, IDX)


def test_guide_via_create_plates_returning_a_list():
    model, x, table = setup()
    guide = MAPAGuide(
        table,
        create_plates=lambda batch_idx=None: [pyro.plate("other", 3), pyro.plate("data", NUM, subsample=batch_idx)],
    )
    tr = poutine.trace(guide).get_trace(IDX)
    check_guide_site(tr, table, IDX)


def test_guide_via_model():
    model, x, table = setup()
    guide = MAPAGuide(table, "c", "data", model=model)
    tr = poutine.trace(guide).get_trace(IDX)
    assert torch.equal(tr.nodes["data"]["value"], model_subsample(model, IDX))
    check_guide_site(tr, table, IDX)


def test_guide_via_condition_on_plate_site():
    model, x, table = setup()
    guide = poutine.condition(MAPAGuide(table, "c", "data"), data={"data": IDX})
    tr = poutine.trace(guide).get_trace(IDX)
    assert torch.equal(tr.nodes["data"]["value"], model_subsample(model, IDX))
    check_guide_site(tr, table, IDX)


def test_plain_guide_without_batch_covers_all_rows():
    """With nothing telling it the minibatch, the guide samples every row, and warns (it may be wrong)."""
    model, x, table = setup()
    with pytest.warns(UserWarning, match="cannot see the model's minibatch"):
        tr = poutine.trace(MAPAGuide(table)).get_trace()
    check_guide_site(tr, table, torch.arange(NUM))


def test_guide_via_model_with_full_batch():
    model, x, table = setup()
    tr = poutine.trace(MAPAGuide(table, model=model)).get_trace(None)
    check_guide_site(tr, table, torch.arange(NUM))


def test_guide_via_model_follows_a_random_subsample():
    """A model that draws its own minibatch: the guide's plate carries it, and replay hands it back."""
    _, x, table = setup()
    base, _, lik = make_empiricalized(n=NUM)

    def model():
        with pyro.plate("data", NUM, subsample_size=4) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(NUM)))
            pyro.sample("x", lik(base.codebook(c)), obs=x[idx])

    guide = MAPAGuide(table, model=model)
    pyro.set_rng_seed(5)
    gtr = poutine.trace(guide).get_trace()
    sub = gtr.nodes["data"]["value"]
    assert sub.shape == (4,)
    check_guide_site(gtr, table, sub)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace()
    assert torch.equal(mtr.nodes["data"]["value"], sub)
    assert torch.equal(mtr.nodes["c"]["value"], gtr.nodes["c"]["value"])


def test_truncated_table_guide_is_renormalized_top_m():
    model, x, table = setup(max_support=4)
    assert table.support_size == 4
    tr = poutine.trace(MAPAGuide(table, model=model)).get_trace(IDX)
    check_guide_site(tr, table, IDX)
    fn = tr.nodes["c"]["fn"]
    # Exactly 4 finite entries per row, summing to one.
    lps = torch.stack([fn.log_prob(torch.full(IDX.shape, j)) for j in range(NUM)], -1)
    assert torch.equal(torch.isfinite(lps).sum(-1), torch.full((5,), 4))
    torch.testing.assert_close(lps.exp().sum(-1), torch.ones(5))


def test_guide_distribution_method_matches_rows():
    _, x, table = setup()
    guide = MAPAGuide(table)
    d = guide.distribution(IDX)
    r = table.rows(IDX)
    assert torch.equal(d.indices, r.indices)
    torch.testing.assert_close(d.logits, r.log_probs, rtol=1e-6, atol=1e-6)


def test_create_plates_with_other_name_raises():
    _, x, table = setup()
    guide = MAPAGuide(table, create_plates=lambda batch_idx=None: pyro.plate("points", NUM, subsample=batch_idx))
    with pytest.raises(ValueError, match="data"):
        guide(IDX)


def test_non_table_raises_type_error():
    _, x, table = setup()
    with pytest.raises(TypeError, match="table must be a PosteriorTable.*got Tensor"):
        MAPAGuide(torch.zeros(NUM, NUM))
    with pytest.raises(TypeError, match="table must be a PosteriorTable.*got NoneType"):
        MAPAGuide(None)
    with pytest.raises(TypeError, match="site and plate must be the names"):
        MAPAGuide(table, site=3)


def test_model_with_mismatched_table_size_raises():
    model, x, _ = setup()
    small = PosteriorTable.from_data(x[:7], GaussianKernel(0.5))
    with pytest.raises(ValueError, match="has 12 categories but the table has 7"):
        MAPAGuide(small, model=model)(IDX[IDX < 7])


def test_model_without_the_site_raises():
    model, x, table = setup()
    with pytest.raises(ValueError, match="no sample site named 'z'"):
        MAPAGuide(table, site="z", model=model)(IDX)


def test_uniform_index_equals_categorical_with_zero_logits():
    import math as _math

    from pyro_mapa.models.distributions import UniformIndex

    u, c = UniformIndex(7), dist.Categorical(logits=torch.zeros(7))
    v = torch.tensor([[0, 3], [6, 2]])
    torch.testing.assert_close(u.expand((2, 2)).log_prob(v), c.expand((2, 2)).log_prob(v))
    assert u.support.upper_bound == 6 and u.expand((3,)).batch_shape == (3,)
    s = UniformIndex(5).sample((4000,))
    assert s.min() == 0 and s.max() == 4
    assert abs(float(s.float().mean()) - 2.0) < 0.1
    assert float(u.log_prob(torch.tensor(1))) == pytest.approx(-_math.log(7))
    with pytest.raises(ValueError, match="support"):
        UniformIndex(7, validate_args=True).log_prob(torch.tensor(9))
