"""The (n, G) index log-likelihood matrix and the blocked mixture log-likelihood against brute force."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_mapa import BernoulliLikelihood, NormalLikelihood
from pyro_mapa.evaluation.index_loglik import index_log_likelihood, log_mixture_likelihood


def case(kind, n=7, g=11, d=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(g, d, generator=gen, dtype=dtype)
    if kind == "normal":
        return torch.randn(n, d, generator=gen, dtype=dtype), params, NormalLikelihood(0.7)
    return (torch.rand(n, d, generator=gen, dtype=dtype) < 0.5).to(dtype), params, BernoulliLikelihood()


def brute_force(x, params, likelihood):
    return torch.tensor([[float(likelihood(params[j]).log_prob(x[i])) for j in range(len(params))]
                         for i in range(len(x))], dtype=torch.float64)


class OpRecorder(TorchDispatchMode):
    """Records the name and output shape of every op run under it."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        self.ops.append((func.overloadpacket.__name__, shape))
        return out


@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_index_log_likelihood_is_the_brute_force_matrix(kind, chunk_size):
    x, params, lik = case(kind)
    got = index_log_likelihood(x, params, lik, chunk_size)
    torch.testing.assert_close(got, brute_force(x, params, lik), rtol=1e-12, atol=1e-12)


def test_index_log_likelihood_edge_cases():
    x, params, lik = case("normal")
    empty = index_log_likelihood(x[:0], params, lik)
    assert empty.shape == (0, len(params))
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        index_log_likelihood(x, params, lik, 0)


@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_elements", [1, 5, 40, 2**24])
@pytest.mark.parametrize("n", [1, 7])
def test_log_mixture_likelihood_is_the_brute_force_logsumexp(kind, weighted, max_elements, n):
    x, params, lik = case(kind, n=n)
    log_w = torch.log_softmax(torch.randn(len(params), generator=torch.Generator().manual_seed(1),
                                          dtype=torch.float64), 0) if weighted else None
    expected = torch.logsumexp(brute_force(x, params, lik) + (0 if log_w is None else log_w), dim=1)
    got = log_mixture_likelihood(x, params, log_w, lik, max_elements)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_gaussian_mixture_takes_one_gemm_per_block_and_other_likelihoods_do_not():
    x, params, lik = case("normal", dtype=torch.float32)
    with OpRecorder() as rec:
        got = log_mixture_likelihood(x, params, None, lik)
    assert any(name in ("mm", "addmm") for name, _ in rec.ops)
    assert got.dtype == torch.float32  # computed in float64, returned in the data's dtype
    torch.testing.assert_close(got.double(), torch.logsumexp(brute_force(x.double(), params.double(), lik), 1),
                               rtol=1e-6, atol=1e-6)
    xb, pb, bern = case("bernoulli")
    with OpRecorder() as rec:
        log_mixture_likelihood(xb, pb, None, bern)
    assert not any(name in ("mm", "addmm") for name, _ in rec.ops)


@pytest.mark.parametrize("max_elements", [6, 40, 100])
def test_generic_blocks_hold_at_most_max_elements_terms(max_elements):
    """The memory promise: no block of likelihood terms (components × points × dims) exceeds ``max_elements``."""
    x, params, lik = case("bernoulli", n=9, g=11, d=3)
    with OpRecorder() as rec:
        got = log_mixture_likelihood(x, params, None, lik, max_elements)
    blocks = [math.prod(shape) for _, shape in rec.ops if len(shape) == 3]
    assert blocks and max(blocks) <= max_elements, blocks
    assert max(blocks) >= max_elements // 2, blocks  # and no needlessly small blocks
    torch.testing.assert_close(got, torch.logsumexp(brute_force(x, params, lik), 1), rtol=1e-10, atol=1e-10)


def test_gaussian_blocks_hold_at_most_max_elements_distances():
    """The GEMM path's (points × components) distance blocks stay within ``max_elements``."""
    x, params, lik = case("normal", n=50, g=20, d=3)
    with OpRecorder() as rec:
        log_mixture_likelihood(x, params, None, lik, 256)
    blocks = [math.prod(shape) for name, shape in rec.ops if name in ("mm", "addmm")]
    assert blocks and 128 <= max(blocks) <= 256, blocks


def reference_mixture(x, means, sigma, log_w=None):
    """float64 log Σ_g w_g N(x_n; μ_g, σ² I) from the exact differences (x - μ) / σ: no expansion, no σ²."""
    u = (x.double().unsqueeze(1) - means.double().unsqueeze(0)) / sigma
    d = u.shape[-1]
    lp = -0.5 * (u * u).sum(-1) - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    if log_w is not None:
        lp = lp + log_w.double()
    return torch.logsumexp(lp, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e20])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e3, 1e4])
def test_gaussian_gemm_far_from_the_origin_and_at_any_scale(offset, scale, dtype):
    """Points and means at ``scale · (offset + N(0, 1))`` with σ = 0.01 · scale: the float64 GEMM path equals
    the direct float64 reference to 1e-6 nats (its bound; float32 results round at 6e-8 relative). Without
    centring the expansion errs by up to ~eps₆₄·||x||²/σ² (7e-4 nats at offset 1e4, 7e-8 at 1e2)."""
    g = torch.Generator().manual_seed(int(offset) + 3)
    x = (scale * (offset + torch.randn(40, 3, generator=g, dtype=torch.float64))).to(dtype)
    means = (scale * (offset + torch.randn(25, 3, generator=g, dtype=torch.float64))).to(dtype)
    sigma = 0.01 * scale
    log_w = torch.log_softmax(torch.randn(25, generator=g, dtype=torch.float64), 0)
    for w in (None, log_w):
        with OpRecorder() as rec:
            got = log_mixture_likelihood(x, means, w, NormalLikelihood(sigma), max_elements=256)
        assert any(name in ("mm", "addmm") for name, _ in rec.ops), "centred data keep the fast GEMM path"
        assert got.dtype == dtype
        ref = reference_mixture(x, means, sigma, w)
        rtol = 1e-7 if dtype == torch.float32 else 0.0
        torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=1e-6)


def test_gaussian_far_spread_takes_the_direct_path():
    """Means spread over 10^6 σ: the centred expansion could err by 1e-4 nats, so distances are summed directly."""
    g = torch.Generator().manual_seed(5)
    means = torch.randn(30, 2, generator=g, dtype=torch.float64) * 1e6
    x = means[:10] + torch.randn(10, 2, generator=g, dtype=torch.float64)
    with OpRecorder() as rec:
        got = log_mixture_likelihood(x, means, None, NormalLikelihood(1.0))
    assert not any(name in ("mm", "addmm") for name, _ in rec.ops)
    torch.testing.assert_close(got, reference_mixture(x, means, 1.0), rtol=0, atol=1e-9)
