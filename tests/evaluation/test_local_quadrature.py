"""Local quadrature ``log p(x)`` against closed forms, an exact 1-D factorisation and brute-force grids."""

import math

import pytest
import torch

from pyro_mapa import NormalLikelihood
from pyro_mapa.evaluation import grid_log_likelihood
from pyro_mapa.evaluation.local_quadrature import local_quadrature_log_likelihood

F64 = torch.float64


def std_normal_log_prob(w):
    """``log N(w; 0, I)`` row by row."""
    return -0.5 * (w**2).sum(-1) - 0.5 * w.shape[-1] * math.log(2 * math.pi)


def mvn_log_prob(x, mean, cov):
    """Closed-form multivariate normal log-density, float64."""
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def normal_log_prob(x, mean, std):
    """``log N(x; mean, std²)`` in float64 (Normal(0., s) with Python floats would be float32)."""
    std = torch.as_tensor(std, dtype=F64)
    return -0.5 * ((x - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)


def lq(x, decode, sigma, latent_dim, log_prior=std_normal_log_prob, **kwargs):
    """``local_quadrature_log_likelihood`` with a normal likelihood of noise ``sigma``."""
    lik = NormalLikelihood(sigma)
    return local_quadrature_log_likelihood(x, decode, log_prior, lik, latent_dim, **kwargs)


def linear_points(w_mat, b, cov, sigma, n, seed):
    """``n`` draws of ``N(b, cov)``, the mean, and a point ``3σ`` off the decoder's range."""
    g = torch.Generator().manual_seed(seed)
    x = b + torch.randn(n, len(b), generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    q, _ = torch.linalg.qr(torch.cat([w_mat, torch.eye(len(b), dtype=F64)], 1))
    off = b + w_mat[:, 0] + 3 * sigma * q[:, w_mat.shape[1]]  # q[:, d] is orthogonal to the range
    return torch.cat([x, b.unsqueeze(0), off.unsqueeze(0)])


# ------------------------------------------------------------------ linear-Gaussian: closed forms


@pytest.mark.parametrize("sigma", [1e-3, 0.3])
def test_linear_gaussian_2d_matches_closed_form(sigma):
    g = torch.Generator().manual_seed(0)
    w_mat = torch.randn(4, 2, generator=g, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    cov = w_mat @ w_mat.T + sigma**2 * torch.eye(4, dtype=F64)
    x = linear_points(w_mat, b, cov, sigma, 10, seed=1)

    def decode(w):
        return w @ w_mat.T + b

    got = lq(x, decode, sigma, 2)
    assert got.shape == (len(x),) and got.dtype == F64
    ref = mvn_log_prob(x, b, cov)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-7)
    # Rows are independent: blocks of 3 give the same numbers.
    chunked = lq(x, decode, sigma, 2, chunk_size=3)
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma", [1e-3, 0.3])
def test_linear_gaussian_1d_matches_closed_form(sigma):
    a = torch.tensor([0.8, -1.3, 0.4], dtype=F64)
    b = torch.tensor([0.2, 0.0, -0.7], dtype=F64)
    cov = torch.outer(a, a) + sigma**2 * torch.eye(3, dtype=F64)
    x = linear_points(a.unsqueeze(1), b, cov, sigma, 10, seed=2)
    got = lq(x, lambda w: w * a + b, sigma, 1)
    assert got.shape == (len(x),) and got.dtype == F64
    torch.testing.assert_close(got, mvn_log_prob(x, b, cov), rtol=0, atol=1e-7)


def test_non_standard_prior_matches_closed_form():
    # Prior N(m, diag(s²)), its mass partly outside the coarse box [-6, 6]²;
    # x ~ N(W m + b, W S² Wᵀ + σ² I).
    m = torch.tensor([1.5, -2.0], dtype=F64)
    s = torch.tensor([0.5, 2.5], dtype=F64)
    sigma = 0.01
    g = torch.Generator().manual_seed(3)
    w_mat = torch.randn(4, 2, generator=g, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    cov = w_mat @ torch.diag(s**2) @ w_mat.T + sigma**2 * torch.eye(4, dtype=F64)
    x = linear_points(w_mat, w_mat @ m + b, cov, sigma, 10, seed=4)

    def log_prior(w):
        return normal_log_prob(w, m, s).sum(-1)

    got = lq(x, lambda w: w @ w_mat.T + b, sigma, 2, log_prior=log_prior)
    torch.testing.assert_close(got, mvn_log_prob(x, w_mat @ m + b, cov), rtol=0, atol=1e-7)
    # The standard-normal prior gives other numbers: the test sees the prior.
    other = lq(x, lambda w: w @ w_mat.T + b, sigma, 2)
    assert (other - got).abs().max() > 1.0


# ------------------------------------------------------------------ two preimages: f(w) = (w1², w2)

SIGMA_FOLD = 0.01


def square_first(w):
    return torch.stack([w[:, 0] ** 2, w[:, 1]], -1)


def square_first_reference(x, sigma):
    r"""``log p(x)`` by the exact factorisation of ``p(x)``.

    ``p(x) = [∫ N(u; 0, 1) N(x1; u², σ²) du] · N(x2; 0, 1 + σ²)``, the 1-D integral by the trapezoid
    rule with spacing 2·10⁻⁵ on [-4, 4]: the posterior in ``u`` is at least σ/(2·2) = 2.5·10⁻³ wide
    for x1 ≤ 4 (about 10⁻¹ at the fold), so over a hundred nodes per width; |u| > 4 carries prior
    mass 6·10⁻⁵ times a likelihood of at most N(x1; 16, σ²) ≈ 0 for the x1 ≤ 2.5 used here.
    """
    u = torch.linspace(-4.0, 4.0, 400_001, dtype=F64)
    log_w = torch.full_like(u, math.log(8.0 / 400_000))
    log_w[0] = log_w[-1] = log_w[0] - math.log(2.0)
    prior = normal_log_prob(u, 0.0, 1.0) + log_w
    first = torch.stack([(prior + normal_log_prob(x1, u**2, sigma)).logsumexp(0) for x1 in x[:, 0]])
    return first + normal_log_prob(x[:, 1], 0.0, math.sqrt(1 + sigma**2))


TWO_MODE_POINTS = [[0.1, 0.5], [0.3, -1.0], [1.0, 0.1], [2.5, 0.0], [0.06, 1.7]]


def test_two_preimages_match_exact_factorisation():
    # x1 ≥ 0.06: two modes ±√x1, each many posterior widths σ/(2√x1) apart.
    x = torch.tensor(TWO_MODE_POINTS, dtype=F64)
    ref = square_first_reference(x, SIGMA_FOLD)
    got = lq(x, square_first, SIGMA_FOLD, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_one_mode_alone_misses_half_the_mass():
    # The problem is symmetric in w1: one mode holds exactly half of p(x), so max_modes=1 is off by log 2
    # (the test can see a missing mode).
    x = torch.tensor(TWO_MODE_POINTS, dtype=F64)
    ref = square_first_reference(x, SIGMA_FOLD)
    one = lq(x, square_first, SIGMA_FOLD, 2, max_modes=1)
    assert ((ref - one) > 0.5).all()
    torch.testing.assert_close(ref - one, torch.full_like(ref, math.log(2.0)), rtol=0, atol=1e-5)


def test_near_the_fold_matches_exact_factorisation():
    # Near x1 = 0 the posterior in w1 is far from Gaussian. At x1 = 0 it is exp(-u⁴/(2σ²)) under a Hessian
    # of 1 (the prior's); at x1 = σ²/2 the Hessian is singular: a box scaled by it steps over the posterior
    # (off by 0.16 and 1e7 nats before the module shrank such scales). For 0.02 ≲ x1 ≲ 0.04 the two modes
    # are 8-16 widths apart with a saddle only x1²/(2σ²) ≈ 2-8 nats down: merged, the other mode lies near
    # the edge of the kept mode's box; kept apart, the hard cell boundary at u = 0 cuts the integrand at
    # e^{-2}..e^{-8} of its peak, and the midpoint rule on a cut integrand is only first order. Measured:
    # up to 7e-3 nats (x1 = 0.02, refinements=1, tolerance=1e-3), hence 2e-2; a mode counted twice is off
    # by 0.38 here, a missing one by log 2.
    x1 = torch.tensor([-0.01, -0.002, 0.0, SIGMA_FOLD**2 / 2, 0.002, 0.01, 0.02, 0.025, 0.03, 0.04],
                      dtype=F64)
    x = torch.stack([x1, torch.full_like(x1, 0.3)], -1)
    ref = square_first_reference(x, SIGMA_FOLD)
    got = lq(x, square_first, SIGMA_FOLD, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-2)


# ------------------------------------------------------------------ a tanh MLP against grids


def tanh_mlp(scale_in, scale_out, seed=0):
    """A fixed ``2 -> 16 -> 4`` tanh network in float64, its layers' weights scaled by the two scales."""
    g = torch.Generator().manual_seed(seed)
    w1 = scale_in * torch.randn(16, 2, generator=g, dtype=F64)
    b1 = 0.5 * torch.randn(16, generator=g, dtype=F64)
    w2 = scale_out * torch.randn(4, 16, generator=g, dtype=F64)
    b2 = 0.1 * torch.randn(4, generator=g, dtype=F64)
    return lambda w: torch.tanh(w @ w1.T + b1) @ w2.T + b2


def model_points(decode, sigma, n, seed):
    """Latents from the prior and observations ``decode(w) + σ ε``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 2, generator=g, dtype=F64)
    return w, decode(w) + sigma * torch.randn(n, 4, generator=g, dtype=F64)


def converged_grid(x, decode, sigma):
    """The 301-node grid on [-6, 6]², checked against 601 nodes on [-7, 7]² (it resolves the posterior)."""
    lik = NormalLikelihood(sigma)
    coarse = grid_log_likelihood(x, decode, std_normal_log_prob, lik, (-6.0, -6.0), (6.0, 6.0), 301)
    fine = grid_log_likelihood(x, decode, std_normal_log_prob, lik, (-7.0, -7.0), (7.0, 7.0), 601)
    torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-7)
    return coarse


def test_matches_fixed_grid_where_the_grid_resolves_the_posterior():
    # A gentle decoder (Jacobian singular values 0.1-0.9): the σ = 0.3 posterior is wide and near Gaussian.
    # Measured: at most 6e-7 on these points (2.6e-6 on 40); refinement stops at a change of ``tolerance``.
    decode = tanh_mlp(0.3, 0.25)
    _, x = model_points(decode, 0.3, 8, seed=11)
    ref = converged_grid(x, decode, 0.3)
    got = lq(x, decode, 0.3, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.xfail(strict=True, reason="known gap: at σ = 0.3 a decoder with Jacobian singular values 0.2-6 "
                   "gives curved (banana) posteriors reaching beyond the ±half_width boxes in each mode's "
                   "Hessian metric; measured 5 of these 8 points off by 6e-5..1.6e-3 nats (26 of 40 "
                   "points by over 1e-5, up to 9.6e-3), nearly all short")
def test_matches_fixed_grid_for_curved_wide_posteriors():
    decode = tanh_mlp(1.0, 0.5)
    _, x = model_points(decode, 0.3, 8, seed=11)
    ref = converged_grid(x, decode, 0.3)
    got = lq(x, decode, 0.3, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def brute_force_near(x, decode, w0, sigma, half=0.05, nodes=801):
    """``log p(x)`` on ``nodes²`` points of ``w0 ± half`` (sum times cell area), and the box edge's drop.

    Resolves the posterior when its widths, σ over the Jacobian's singular values, lie between a few
    spacings (1.25·10⁻⁴) and a small fraction of ``half``.
    """
    axis = torch.linspace(-half, half, nodes, dtype=F64)
    w = w0 + torch.cartesian_prod(axis, axis)
    lj = std_normal_log_prob(w) + normal_log_prob(x, decode(w), sigma).sum(-1)
    grid = lj.reshape(nodes, nodes)
    edge = torch.cat([grid[0], grid[-1], grid[:, 0], grid[:, -1]]).max()
    return lj.logsumexp(0) + 2 * math.log(2 * half / (nodes - 1)), lj.max() - edge


def test_narrow_posterior_where_the_fixed_grid_fails():
    sigma = 1e-3
    decode = tanh_mlp(1.0, 0.5)
    w_all, x_all = model_points(decode, sigma, 12, seed=5)
    jac = torch.func.vmap(torch.func.jacrev(lambda w: decode(w.unsqueeze(0))[0]))(w_all)
    singular = torch.linalg.svdvals(jac)
    pick = (singular.amin(-1) > 0.5).nonzero().squeeze(1)[:3]  # where the brute-force box holds the posterior
    assert len(pick) == 3
    w0, x = w_all[pick], x_all[pick]
    refs, drops = zip(*(brute_force_near(xi, decode, wi, sigma) for xi, wi in zip(x, w0)))
    ref = torch.stack(refs)
    assert min(drops) > 30  # the posterior is inside the box
    got = lq(x, decode, sigma, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    fixed = grid_log_likelihood(x, decode, std_normal_log_prob, NormalLikelihood(sigma), (-6.0, -6.0),
                                (6.0, 6.0), 301)
    assert (fixed - ref).abs().max() > 10


# ------------------------------------------------------------------ bad input


def _linear_decode(w):
    return torch.cat([w, w], -1)[:, :4]


X_OK = torch.zeros(3, 4, dtype=F64)


@pytest.mark.parametrize("x,latent_dim,kwargs,error,match", [
    (X_OK, 3, {}, ValueError, "latent_dim"),
    (X_OK, 0, {}, ValueError, "latent_dim"),
    (X_OK, True, {}, ValueError, "latent_dim"),
    (torch.tensor([[0.0, float("nan"), 0.0, 0.0]], dtype=F64), 2, {}, ValueError, "x contains NaN"),
    (torch.zeros(4, dtype=F64), 2, {}, ValueError, r"x must have shape \(N, D\)"),
    (torch.zeros(2, 3, 4, dtype=F64), 2, {}, ValueError, r"x must have shape \(n, D\)"),
    (torch.zeros(3, 5, dtype=F64), 2, {}, ValueError, r"x has rows of shape \(5,\)"),
    ([[0.0, 0.0, 0.0, 0.0]], 2, {}, TypeError, "x must be a torch.Tensor"),
    (X_OK, 2, {"low": 1.0, "high": 1.0}, ValueError, "low must be below high"),
    (X_OK, 2, {"low": 2.0, "high": -2.0}, ValueError, "low must be below high"),
    (X_OK, 2, {"low": -math.inf}, ValueError, "low must be below high"),
    (X_OK, 2, {"half_width": 0.0}, ValueError, "half_width"),
    (X_OK, 2, {"half_width": -1.0}, ValueError, "half_width"),
    (X_OK, 2, {"half_width": math.nan}, ValueError, "half_width"),
    (X_OK, 2, {"nodes": 0}, ValueError, "nodes must be >= 1"),
    (X_OK, 2, {"nodes": 2.5}, TypeError, "nodes must be an int"),
    (X_OK, 2, {"max_modes": 0}, ValueError, "max_modes"),
    (X_OK, 2, {"chunk_size": 0}, ValueError, "chunk_size"),
    (X_OK, 2, {"coarse_points": 0}, ValueError, "coarse_points"),
    (X_OK, 2, {"newton_steps": -1}, ValueError, "newton_steps"),
    (X_OK, 2, {"refinements": -1}, ValueError, "refinements"),
])
def test_bad_input_is_refused_naming_the_argument(x, latent_dim, kwargs, error, match):
    with pytest.raises(error, match=match):
        lq(x, _linear_decode, 0.1, latent_dim, **kwargs)
