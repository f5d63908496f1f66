import math

import pytest
import torch

from pyro_mapa import BernoulliKernel, GaussianKernel, PosteriorTable
from pyro_mapa.table.sampling import remainder_log_probs


def dense_log_q(x, kernel):
    """Reference: the full N×N MAPA matrix in float64, by brute force."""
    x = x.double()
    d2 = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1)
    log_k = kernel.log_kernel_from_sqdist(d2)
    return log_k - log_k.logsumexp(1, keepdim=True)


@pytest.fixture
def data():
    return torch.randn(37, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 36, 100])
def test_dense_table_equals_brute_force(data, chunk_size):
    kernel = GaussianKernel(0.7)
    table = PosteriorTable.from_data(data, kernel, chunk_size=chunk_size)
    ref = dense_log_q(data, kernel)
    # Rebuild the dense matrix from the sorted rows.
    rebuilt = torch.empty_like(ref).scatter_(1, table.indices, table.log_probs.double())
    torch.testing.assert_close(rebuilt, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(table.log_probs.exp().sum(1), torch.ones(len(data)), atol=1e-5)
    assert (table.log_probs[:, 1:] <= table.log_probs[:, :-1]).all(), "rows must be sorted"
    assert torch.equal(table.indices[:, 0], torch.arange(len(data))), "top-1 of a row is itself"


@pytest.mark.parametrize("chunk_size", [3, 8, 37])
@pytest.mark.parametrize("max_support", [1, 4, 10])
def test_truncated_table_keeps_exact_top_m(data, chunk_size, max_support):
    kernel = GaussianKernel(0.5)
    full = PosteriorTable.from_data(data, kernel)
    trunc = PosteriorTable.from_data(data, kernel, max_support=max_support, chunk_size=chunk_size)
    assert trunc.support_size == max_support
    assert torch.equal(trunc.indices, full.indices[:, :max_support])
    torch.testing.assert_close(trunc.log_probs, full.log_probs[:, :max_support])
    # The normalizer is exact over all N, so a truncated row sums to at most one.
    assert (trunc.log_probs.exp().sum(1) <= 1 + 1e-6).all()
    torch.testing.assert_close(trunc.log_normalizer, full.log_normalizer)
    k = min(3, max_support)
    top_full, top_trunc = full.top_k(torch.arange(5), k), trunc.top_k(torch.arange(5), k)
    assert torch.equal(top_full.indices, top_trunc.indices)


def test_bernoulli_table_closed_form():
    x = (torch.rand(20, 11, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    rho = 0.85
    table = PosteriorTable.from_data(x, BernoulliKernel(rho), chunk_size=7)
    hamming = (x.unsqueeze(1) != x.unsqueeze(0)).double().sum(-1)
    log_k = hamming * math.log(1 - rho) + (x.shape[1] - hamming) * math.log(rho)
    ref = log_k - log_k.logsumexp(1, keepdim=True)
    rebuilt = torch.empty_like(ref).scatter_(1, table.indices, table.log_probs.double())
    torch.testing.assert_close(rebuilt, ref, rtol=1e-5, atol=1e-5)


def test_ties_broken_by_index():
    x = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    table = PosteriorTable.from_data(x, GaussianKernel(1.0))
    assert table.indices[1].tolist() == [1, 3, 0, 2]
    assert table.indices[2].tolist() == [0, 2, 1, 3]


def test_uniform_and_from_log_probs():
    u = PosteriorTable.uniform(6)
    torch.testing.assert_close(u.log_probs[2], torch.full((6,), -math.log(6)))
    lp = torch.log(torch.tensor([[1.0, 2.0, 7.0], [5.0, 3.0, 2.0]]))
    t = PosteriorTable.from_log_probs(lp)
    assert t.indices.tolist() == [[2, 1, 0], [0, 1, 2]]
    torch.testing.assert_close(t.log_probs.exp(), torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))


def test_remainder_is_renormalized_tail(data):
    table = PosteriorTable.from_data(data, GaussianKernel(1.0))
    rest = table.remainder(torch.arange(4), 3)
    assert rest.indices.shape == (4, len(data) - 3)
    torch.testing.assert_close(rest.log_probs.exp().sum(1), torch.ones(4))
    torch.testing.assert_close(
        rest.log_probs, table.log_probs[:4, 3:] - table.log_probs[:4, 3:].logsumexp(1, keepdim=True)
    )


def test_sample_remainder_frequencies_and_log_q():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    t = PosteriorTable.from_log_probs(lp)
    g = torch.Generator().manual_seed(0)
    idx, log_q = t.sample_remainder(torch.tensor([0]), 1, 20000, generator=g)
    assert idx.shape == (1, 20000) and not (idx == 0).any()
    freq = torch.bincount(idx[0], minlength=4).double() / 20000
    torch.testing.assert_close(freq[1:], torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=0.015, rtol=0)
    expected = torch.log(torch.tensor([0.0, 0.6, 0.3, 0.1]))[idx[0]]
    torch.testing.assert_close(log_q[0], expected)


def test_underflowed_remainder_falls_back_to_uniform():
    # Row 0: all mass on index 0; the remainder's probabilities underflow to exactly 0.
    lp = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]])
    rest = remainder_log_probs(lp, 1)
    torch.testing.assert_close(rest, torch.full((1, 3), -math.log(3)))
    t = PosteriorTable(torch.tensor([[0, 1, 2, 3]]), lp, 4)
    idx, log_q = t.sample_remainder(torch.tensor([0]), 1, 50)
    torch.testing.assert_close(log_q, torch.full((1, 50), -math.log(3)))
    assert set(idx[0].tolist()) == {1, 2, 3}


def test_empty_remainder_and_impossible_k(data):
    table = PosteriorTable.from_data(data, GaussianKernel(1.0))
    n = len(data)
    idx, log_q = table.sample_remainder(torch.arange(3), n, 5)  # K = N: nothing left to sample
    assert idx.shape == (3, 0) and log_q.shape == (3, 0)
    with pytest.raises(ValueError, match="num_top"):
        table.top_k(torch.arange(3), n + 1)
    trunc = PosteriorTable.from_data(data, GaussianKernel(1.0), max_support=4)
    with pytest.raises(ValueError, match="max_support"):
        trunc.top_k(None, 5)
    with pytest.raises(ValueError, match=">= 0"):
        table.sample_remainder(None, 1, -1)
    with pytest.raises(ValueError, match=">= 0"):
        table.top_k(None, -2)


def test_save_load_round_trip(tmp_path, data):
    table = PosteriorTable.from_data(data, GaussianKernel(0.3), max_support=6)
    path = tmp_path / "sub" / "table.pt"
    table.save(path)
    loaded = PosteriorTable.load(path)
    assert torch.equal(loaded.indices, table.indices)
    assert torch.equal(loaded.log_probs, table.log_probs)
    assert loaded.fingerprint == table.fingerprint
    assert loaded.config == {"kernel": "GaussianKernel", "bandwidth": 0.3, "max_support": 6}
    assert [p.name for p in path.parent.iterdir()] == ["table.pt"], "no temporary file left behind"
    loaded.check_data(data)
    with pytest.raises(ValueError, match="fingerprint"):
        loaded.check_data(data + 1)


def test_load_rejects_damaged_files(tmp_path, data):
    table = PosteriorTable.from_data(data, GaussianKernel(0.3))
    path = tmp_path / "table.pt"
    table.save(path)
    raw = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="could not read"):
        PosteriorTable.load(tmp_path / "truncated.pt")
    # Alter the stored tensors but keep the file readable: the checksum catches it.
    payload = torch.load(path, weights_only=True)
    payload["log_probs"] = payload["log_probs"] + 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="checksum"):
        PosteriorTable.load(tmp_path / "tampered.pt")
    torch.save({"meta": '{"format": "other"}'}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyro_mapa"):
        PosteriorTable.load(tmp_path / "other.pt")


def test_from_data_bad_arguments(data):
    with pytest.raises(TypeError, match="kernel"):
        PosteriorTable.from_data(data, "gaussian")
    with pytest.raises(ValueError, match="max_support"):
        PosteriorTable.from_data(data, GaussianKernel(1.0), max_support=0)
    with pytest.raises(ValueError, match="max_support"):
        PosteriorTable.from_data(data, GaussianKernel(1.0), max_support=len(data) + 1)
    with pytest.raises(ValueError, match="NaN"):
        PosteriorTable.from_data(torch.tensor([[float("nan")]]), GaussianKernel(1.0))
    with pytest.raises(ValueError, match="binary"):
        PosteriorTable.from_data(data, BernoulliKernel(0.9))


def test_bernoulli_ties_broken_by_index_in_truncated_tables():
    """Hamming distances tie often; with max_support < N the order is (distance, column index)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(60, 6, generator=g) > 0.5).float()  # only 64 patterns: many exact ties
    kernel = BernoulliKernel(0.8)
    table = PosteriorTable.from_data(x, kernel, max_support=10, chunk_size=7)
    hamming = (x.unsqueeze(1) != x.unsqueeze(0)).sum(-1)
    key = hamming * 60 + torch.arange(60)
    expected = torch.sort(key, dim=1).indices[:, :10]
    assert torch.equal(table.indices, expected)
    full = PosteriorTable.from_data(x, kernel)
    torch.testing.assert_close(table.log_probs, full.log_probs[:, :10])
    torch.testing.assert_close(table.log_normalizer, full.log_normalizer)


def test_single_observation_is_refused():
    with pytest.raises(ValueError, match="at least 2 observations"):
        PosteriorTable.from_data(torch.zeros(1, 3), GaussianKernel(1.0))


def test_given_uniforms_are_neither_modified_nor_ignored(data):
    """Both samplers accept the caller's uniforms (e.g. counter-based ones) and leave them as they were."""
    table = PosteriorTable.from_data(data, GaussianKernel(1.0))
    rows = torch.arange(4)
    width = table.support_size - 2
    u = torch.rand(4, width, generator=torch.Generator().manual_seed(0))
    u[0, 0] = 0.0  # torch.rand can return 0: the sampler clamps its copy in place, not the caller's tensor
    before = u.clone()
    a = table.sample_remainder_without_replacement(rows, 2, 3, uniforms=u)
    assert torch.equal(u, before)
    torch.testing.assert_close(table.sample_remainder_without_replacement(rows, 2, 3, uniforms=before).indices,
                               a.indices)
    w = 1.0 - torch.rand(4, 3, generator=torch.Generator().manual_seed(1))
    w_before = w.clone()
    b = table.sample_remainder(rows, 2, 3, uniforms=w)
    assert torch.equal(w, w_before)
    torch.testing.assert_close(table.sample_remainder(rows, 2, 3, uniforms=w_before).indices, b.indices)
