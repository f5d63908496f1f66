r"""The metrics of the LiBI benchmarks (docs/results.md, "LiBI's benchmarks"), for a VAE-type model with a
mean-field Gaussian ``q(z | x)`` and a standard-normal prior, ``d <= 2``.

- :func:`paper_importance_log_likelihood`: the LiBI paper's estimator of ``log p_θ(x)``, importance
  sampling from ``q`` with its variance doubled.
- :func:`elbo_by_quadrature` and hence ``KL(q(z|x) ‖ p_θ(z|x)) = log p_θ(x) − ELBO(x)`` without Monte Carlo:
  Gauss–Hermite quadrature under each ``q(z | x)``.
- :func:`aggregate_kl`: ``KL(q_agg ‖ p)``, ``q_agg = (1/n) Σ_n q(z | x_n)``, by Gauss–Hermite quadrature under
  each component.
- :func:`mmd2`: the two-sample statistic, the unbiased squared maximum mean discrepancy with a Gaussian
  kernel of median-heuristic bandwidth (Gretton et al. 2012), our documented stand-in for the paper's
  smoothed k-NN statistic, whose k and temperature the paper does not give.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["aggregate_kl", "elbo_by_quadrature", "gauss_hermite_nodes", "mmd2", "paper_importance_log_likelihood"]


def gauss_hermite_nodes(num: int, d: int, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    r"""Nodes ``t`` ``(num^d, d)`` and log-weights for :math:`E_{N(0, I_d)}[f] ≈ Σ_i w_i f(t_i)`."""
    t, w = np.polynomial.hermite.hermgauss(num)
    t = torch.as_tensor(t, dtype=dtype) * math.sqrt(2.0)
    logw = torch.as_tensor(np.log(w), dtype=dtype) - 0.5 * math.log(math.pi)
    if d == 1:
        return t.unsqueeze(1), logw
    return torch.cartesian_prod(t, t), (logw.unsqueeze(1) + logw.unsqueeze(0)).reshape(-1)


def _log_lik(likelihood, params: Tensor, x: Tensor) -> Tensor:
    """``log p(x | params)`` summed over the observation's ``D`` coordinates: shape ``params.shape[:-1]``."""
    lp = likelihood(params).log_prob(x)
    return lp.sum(-1) if lp.dim() == params.dim() else lp


def _std_normal(z: Tensor) -> Tensor:
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def _normal(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


@torch.no_grad()
def paper_importance_log_likelihood(decoder, likelihood, loc: Tensor, scale: Tensor, x: Tensor,
                                    num_samples: int = 5000, seed: int = 0, chunk: int = 50) -> tuple[Tensor, Tensor]:
    r"""``log p(x) ≈ log (1/S) Σ_s p(z_s) p(x | z_s) / q̃(z_s)``, ``q̃ = N(loc, 2 scale²)`` (the paper's choice).

    Returns:
        Per-point estimates and their delta-method standard errors, ``(n,)`` each.
    """
    gen = torch.Generator().manual_seed(seed)
    wide = scale * math.sqrt(2.0)
    est, se = [], []
    for xb, lb, sb in zip(x.split(chunk), loc.split(chunk), wide.split(chunk)):
        z = lb + sb * torch.randn((num_samples, *lb.shape), generator=gen, dtype=lb.dtype)  # (S, B, d)
        logw = _std_normal(z) + _log_lik(likelihood, decoder(z), xb) - _normal(z, lb, sb)
        logw = logw.double()
        m = logw.logsumexp(0)
        est.append(m - math.log(num_samples))
        w = (logw - m).exp() * num_samples  # weights over their mean
        se.append(w.std(0) / math.sqrt(num_samples))
    return torch.cat(est), torch.cat(se)


@torch.no_grad()
def elbo_by_quadrature(decoder, likelihood, loc: Tensor, scale: Tensor, x: Tensor, num_nodes: int = 20,
                       chunk: int = 100) -> Tensor:
    r"""Per-point :math:`E_{q}[\log p(z) + \log p(x \mid z)] + H(q)`, Gauss–Hermite with ``num_nodes`` per axis."""
    d = loc.shape[-1]
    t, logw = gauss_hermite_nodes(num_nodes, d)
    out = []
    for xb, lb, sb in zip(x.split(chunk), loc.double().split(chunk), scale.double().split(chunk)):
        z = lb.unsqueeze(1) + sb.unsqueeze(1) * t  # (B, Q, d)
        params = decoder(z.to(torch.get_default_dtype())).double()
        term = _std_normal(z) + _log_lik(likelihood, params, xb.double().unsqueeze(1))
        entropy = (sb.log() + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        out.append((term * logw.exp()).sum(1) + entropy)
    return torch.cat(out)


@torch.no_grad()
def aggregate_kl(loc: Tensor, scale: Tensor, num_nodes: int = 10, chunk: int = 25) -> float:
    r""":math:`\mathrm{KL}(q_{agg} \| N(0, I))`, :math:`q_{agg} = \frac1n \sum_n N(\mu_n, \mathrm{diag}\,s_n^2)`.

    :math:`\frac1n \sum_n E_{q_n}[\log q_{agg}(z) - \log p(z)]`, each expectation by Gauss–Hermite
    quadrature under ``q_n`` (``num_nodes`` per axis); ``log q_agg`` is the exact mixture density.
    """
    loc, scale = loc.double(), scale.double()
    n, d = loc.shape
    t, logw = gauss_hermite_nodes(num_nodes, d)
    total = 0.0
    for lb, sb in zip(loc.split(chunk), scale.split(chunk)):
        z = lb.unsqueeze(1) + sb.unsqueeze(1) * t  # (B, Q, d)
        comp = _normal(z.unsqueeze(2), loc, scale)  # (B, Q, n)
        log_q = comp.logsumexp(-1) - math.log(n)
        total += float(((log_q - _std_normal(z)) * logw.exp()).sum())
    return total / n


def mmd2(a: Tensor, b: Tensor) -> float:
    r"""Unbiased :math:`\mathrm{MMD}^2` between samples ``a`` and ``b`` (rows), Gaussian kernel
    :math:`k(u, v) = \exp(-\lVert u - v\rVert^2 / (2 h^2))` with ``h`` the median pairwise distance of the pooled sample.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"mmd2 needs two samples of shape (n >= 2, D) with the same D, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("mmd2: the samples contain NaN or inf; drop those rows first")
    a, b = a.double(), b.double()
    pooled = torch.cat([a, b])
    dist2 = torch.cdist(pooled, pooled).pow(2)
    h2 = dist2[torch.triu_indices(len(pooled), len(pooled), 1).unbind()].median().clamp(min=1e-300)
    k = torch.exp(-dist2 / (2 * h2))
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
                 - 2 * kab.mean())
