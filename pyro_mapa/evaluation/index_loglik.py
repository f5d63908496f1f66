"""The one home of the per-point, per-component log-likelihood matrix.

Every exact evaluator reduces to the matrix :math:`\\ell_{ng} = \\log p(x_n \\mid \\theta_g)` of
``n`` query points against ``G`` decoded parameters (the ``N`` codes of the empiricalized
model, or the nodes of a quadrature grid):

- :func:`index_log_likelihood` returns it (``O(n·G)`` memory, in row blocks);
- :func:`log_mixture_likelihood` returns :math:`\\operatorname{logsumexp}_g [\\log w_g + \\ell_{ng}]`
  without ever holding it, in blocks over points and components, with a float64 GEMM path
  for Gaussian likelihoods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.likelihoods import Likelihood, NormalLikelihood

__all__ = ["index_log_likelihood", "log_mixture_likelihood"]

# Largest error (nats) of a Gaussian log-likelihood that the GEMM path may make; beyond it, direct sums.
_GEMM_TOLERANCE = 1e-6


def index_log_likelihood(x: Tensor, params: Tensor, likelihood: Likelihood, chunk_size: int = 256) -> Tensor:
    """``(n, G)`` matrix :math:`\\log p(x_n \\mid \\mathrm{params}_g)` of query points against decoded parameters.

    Arguments:
        x: ``(n, D)`` query points.
        params: ``(G, ...)`` likelihood parameters (e.g. the decoded codes).
        likelihood: The observation model.
        chunk_size: Query points per block.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    blocks = [
        likelihood(params.unsqueeze(0)).log_prob(x[start : start + chunk_size].unsqueeze(1))
        for start in range(0, x.shape[0], chunk_size)
    ]
    return torch.cat(blocks) if blocks else params.new_empty((0, params.shape[0]))


def log_mixture_likelihood(
    x: Tensor, params: Tensor, log_w: Tensor | None, likelihood: Likelihood, max_elements: int = 2**24
) -> Tensor:
    """``logsumexp_g [log_w[g] + log p(x_n | params[g])]`` per point, in blocks of at most ``max_elements``.

    Blocks run over both the points and the mixture components, so memory stays bounded
    (about ``max_elements`` likelihood terms at a time) whatever the grid or data size.
    A Gaussian likelihood takes a matrix-multiply path in float64 on data centred at the
    means' average and measured in units of σ (``||x - μ||² = ||x||² + ||μ||² - 2 x·μ``):
    one GEMM per block instead of a ``(G, b, D)`` tensor, accurate whatever the data's
    offset and scale (direct sums when the means spread beyond about 2·10^4 σ).
    """
    if isinstance(likelihood, NormalLikelihood) and params.dim() == 2:
        return _log_mixture_normal(x, params, log_w, likelihood.sigma, max_elements)
    g, d = params.shape[0], max(1, x[0].numel())
    g_chunk = min(g, max(1, max_elements // d))
    x_chunk = max(1, max_elements // (g_chunk * d))
    out = []
    for xs in range(0, x.shape[0], x_chunk):
        xb = x[xs : xs + x_chunk].unsqueeze(0)
        acc = None
        for gs in range(0, g, g_chunk):
            lp = likelihood(params[gs : gs + g_chunk].unsqueeze(1)).log_prob(xb)  # (g_chunk, b)
            if log_w is not None:
                lp = lp + log_w[gs : gs + g_chunk].unsqueeze(1)
            part = torch.logsumexp(lp, dim=0)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out)


def _log_mixture_normal(x: Tensor, means: Tensor, log_w: Tensor | None, sigma: float, max_elements: int) -> Tensor:
    """The Gaussian mixture by GEMM on centred data in units of σ, in float64.

    Points and means are centred at the means' average and divided by σ before the
    expansion ``||x||² + ||μ||² - 2 x·μ``, whose rounding error is absolute (about
    ``eps·(||x||² + ||μ||²)``): without the centring, data far from the origin lose every
    digit of the distances. When even the centred expansion could err by more than
    ``_GEMM_TOLERANCE`` nats (means spread beyond about 2·10^4 σ), distances are summed
    directly as ``Σ (x - μ)²`` instead.
    """
    mu = means.to(torch.float64)
    centre = mu.detach().mean(0)  # any fixed point: the distances (and their gradients) do not depend on it
    x64 = (x.to(torch.float64).reshape(len(x), -1) - centre) / sigma
    mu = (mu - centre) / sigma
    d = mu.shape[1]
    const = -d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    mu_sq = (mu * mu).sum(1)
    x_sq = (x64 * x64).sum(1, keepdim=True)
    # A point inside the means' cloud (|x|² ≲ 3 max|μ|²) gets d2 / 2 wrong by up to ~8 eps max|μ|²;
    # a point far outside it has a proportionally larger distance, so its relative error stays ~eps.
    direct = 8.0 * torch.finfo(torch.float64).eps * (float(mu_sq.detach().max()) if len(mu) else 0.0) > _GEMM_TOLERANCE
    g_chunk = min(len(mu), max(1, max_elements // (64 * d if direct else 64)))
    x_chunk = max(1, max_elements // (g_chunk * (d if direct else 1)))
    out = []
    for xs in range(0, len(x64), x_chunk):
        xb = x64[xs : xs + x_chunk]
        acc = None
        for gs in range(0, len(mu), g_chunk):
            mb = mu[gs : gs + g_chunk]
            if direct:
                d2 = (xb.unsqueeze(1) - mb.unsqueeze(0)).pow(2).sum(-1)
            else:
                d2 = (x_sq[xs : xs + x_chunk] + mu_sq[gs : gs + g_chunk].unsqueeze(0) - 2 * xb @ mb.T).clamp(min=0)
            lp = const - 0.5 * d2  # (b, g_chunk)
            if log_w is not None:
                lp = lp + log_w[gs : gs + g_chunk].to(torch.float64).unsqueeze(0)
            part = torch.logsumexp(lp, dim=1)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out).to(x.dtype)
