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
    A Gaussian likelihood takes a matrix-multiply path in float64
    (``||x - μ||² = ||x||² + ||μ||² - 2 x·μ``): one GEMM per block instead of a
    ``(G, b, D)`` tensor.
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
    x64, mu = x.to(torch.float64).reshape(len(x), -1), means.to(torch.float64)
    d = mu.shape[1]
    const = -d * math.log(sigma * math.sqrt(2 * math.pi))
    mu_sq = (mu * mu).sum(1)
    g_chunk = min(len(mu), max(1, max_elements // 64))
    x_chunk = max(1, max_elements // g_chunk)
    out = []
    for xs in range(0, len(x64), x_chunk):
        xb = x64[xs : xs + x_chunk]
        xb_sq = (xb * xb).sum(1, keepdim=True)
        acc = None
        for gs in range(0, len(mu), g_chunk):
            d2 = (xb_sq + mu_sq[gs : gs + g_chunk].unsqueeze(0) - 2 * xb @ mu[gs : gs + g_chunk].T).clamp(min=0)
            lp = const - d2 / (2 * sigma**2)  # (b, g_chunk)
            if log_w is not None:
                lp = lp + log_w[gs : gs + g_chunk].to(torch.float64).unsqueeze(0)
            part = torch.logsumexp(lp, dim=1)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out).to(x.dtype)
