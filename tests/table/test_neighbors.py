"""The approximate-neighbour backend (faiss HNSW) against the exact table."""

import math

import pytest
import torch

from pyro_mapa import GaussianKernel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO

import faiss  # noqa: F401  (installed by the test extra; this module tests the faiss backend)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return torch.randn(1500, 12, generator=torch.Generator().manual_seed(0))


def test_hnsw_recall_and_exact_normalizer(data):
    k = GaussianKernel(2.0)
    exact = PosteriorTable.from_data(data, k, max_support=16)
    approx = PosteriorTable.from_data(data, k, max_support=16, neighbors="hnsw")
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact.indices, approx.indices)) / exact.indices.numel()
    assert recall > 0.97
    torch.testing.assert_close(approx.log_normalizer, exact.log_normalizer, rtol=1e-5, atol=1e-5)
    # Rows agree exactly wherever HNSW found the exact neighbour set.
    same = (torch.sort(exact.indices, 1).values == torch.sort(approx.indices, 1).values).all(1)
    assert same.float().mean() > 0.8
    torch.testing.assert_close(approx.log_probs[same], exact.log_probs[same], rtol=1e-4, atol=1e-4)
    assert (approx.log_probs[:, 1:] <= approx.log_probs[:, :-1]).all()
    assert approx.config["neighbors"] == "hnsw"


def test_sampled_normalizer_error_is_reported_honestly(data):
    k = GaussianKernel(2.0)
    exact = PosteriorTable.from_data(data, k, max_support=16)
    errs, ses = [], []
    for seed in range(6):
        s = PosteriorTable.from_data(data, k, max_support=16, neighbors="hnsw", normalizer="sampled",
                                     num_normalizer_samples=400, seed=seed)
        errs.append(s.log_normalizer - exact.log_normalizer)
        ses.append(s.log_normalizer_se)
    err, se = torch.stack(errs), torch.stack(ses)
    assert torch.isfinite(err).all() and (se > 0).all()
    # The reported standard error matches the actual spread across seeds (within a factor 2) ...
    ratio = float(err.std(0).mean() / se.mean())
    assert 0.5 < ratio < 2.0
    # ... and the estimate has no bias beyond a small fraction of it.
    assert abs(float(err.mean())) < 0.5 * float(se.mean())


def test_hnsw_table_gives_a_valid_bound(data):
    """K = M on the approximate table sums M of the N positive terms exactly: below the exact LML."""
    from pyro_mapa import AmortizedCodebook, EmpiricalizedModel, NormalLikelihood, mlp

    x = data[:300]
    torch.manual_seed(0)
    model = EmpiricalizedModel(AmortizedCodebook(mlp(12, 1, (8,)), mlp(1, 12, (8,)), x), NormalLikelihood(1.0))
    full = PosteriorTable.from_data(x, GaussianKernel(2.0))
    approx = PosteriorTable.from_data(x, GaussianKernel(2.0), max_support=16, neighbors="hnsw")
    exact_lml = -TraceMAPA_ELBO(300).loss(model, MAPAGuide(full))
    b = -TraceMAPA_ELBO(16).loss(model, MAPAGuide(approx))
    b_sampled = -TraceMAPA_ELBO(8, 8).loss(model, MAPAGuide(approx))
    assert math.isfinite(b) and math.isfinite(b_sampled)
    assert b <= exact_lml + 1e-4  # a partial sum of the N positive terms


def test_bad_backend_arguments(data):
    k = GaussianKernel(1.0)
    with pytest.raises(ValueError, match="neighbors"):
        PosteriorTable.from_data(data, k, max_support=8, neighbors="annoy")
    with pytest.raises(ValueError, match="max_support"):
        PosteriorTable.from_data(data, k, neighbors="hnsw")
    with pytest.raises(ValueError, match="sampled"):
        PosteriorTable.from_data(data, k, max_support=8, normalizer="sampled")
    with pytest.raises(ValueError, match="normalizer"):
        PosteriorTable.from_data(data, k, max_support=8, neighbors="hnsw", normalizer="guess")


def test_hnsw_options_raise_recall(data):
    k = GaussianKernel(2.0)
    exact = PosteriorTable.from_data(data, k, max_support=16)

    def recall(opts):
        t = PosteriorTable.from_data(data, k, max_support=16, neighbors="hnsw", hnsw_options=opts)
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact.indices, t.indices))

    assert recall({"hnsw_m": 4, "ef_search": 16}) < recall({"hnsw_m": 32, "ef_search": 256})
