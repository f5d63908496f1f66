"""The exact latent posterior :math:`p_\\theta(z \\mid x)` on a 1-D or 2-D grid, and log-likelihoods to train on.

For a latent dimension ``d ≤ 2`` every integral over ``z`` is a sum over a tensor-product
trapezoid grid :math:`\\{z_g\\}` with cell weights :math:`c_g` (:func:`latent_grid`). With the
log-likelihood matrix :math:`\\ell_{ng} = \\log p_\\theta(x_n \\mid f_\\theta(z_g))`
(:func:`~pyro_mapa.evaluation.index_log_likelihood`):

.. math::
    \\log p_\\theta(x_n) = \\operatorname{logsumexp}_g\\,[\\ell_{ng} + \\log c_g + \\log p(z_g)],
    \\qquad
    \\pi_{ng} = \\operatorname{softmax}_g\\,[\\ell_{ng} + \\log c_g + \\log p(z_g)],

where :math:`\\pi_n` is the posterior's mass on the cells around the nodes. For a smooth
decoder the trapezoid rule converges faster than any power of the spacing ``h`` once the
posterior is a few ``h`` wide; kinks (ReLU-type decoders) make it second order in ``h``.

- :func:`grid_log_marginal`: the log-likelihood, differentiable in the decoder (it equals
  :func:`~pyro_mapa.evaluation.quadrature_log_likelihood` and
  :func:`~pyro_mapa.evaluation.grid_log_likelihood`, which run the decoder without gradients).
- :func:`exact_posterior`: a :class:`GridPosterior` with the posterior's mean, covariance and
  :math:`\\mathrm{KL}(p_\\theta(z \\mid x) \\,\\|\\, p(z))`.
- :func:`kl_to_posterior`: :math:`\\mathrm{KL}(q(z \\mid x) \\,\\|\\, p_\\theta(z \\mid x))` for any
  guide distribution, by the same quadrature.
- :func:`importance_log_marginal`: for ``d > 2``, a many-sample importance-sampled
  :math:`\\log \\hat p_\\theta(x)`, differentiable in the decoder, biased low (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import check_positive_int
from ..models.likelihoods import Likelihood
from .exact import gauss_legendre_grid
from .importance import ImportanceEstimate, check_data, log_joint
from .index_loglik import index_log_likelihood
from .proposal import Proposal

__all__ = [
    "GridMassError",
    "GridPosterior",
    "LatentGrid",
    "exact_posterior",
    "grid_log_marginal",
    "grid_log_masses",
    "importance_log_marginal",
    "kl_to_posterior",
    "latent_grid",
    "standard_normal_log_prob",
]

_MAX_ELEMENTS = 2**22  # log-likelihood terms held at once per block of data points


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """:math:`\\log \\mathcal N(z; 0, I)` summed over the last dimension: ``(..., d) -> (...)``."""
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


class GridMassError(ValueError):
    """A guide's density is not resolved by the grid (narrower than its spacing, or reaching outside it)."""


class LatentGrid(NamedTuple):
    """A quadrature grid over the latent space with a prior.

    Attributes:
        z: ``(G, d)`` nodes.
        log_weight: ``(G,)`` :math:`\\log c_g + \\log p(z_g)`, so that
            :math:`\\int g(z)\\, p(z)\\, dz \\approx \\sum_g e^{\\mathrm{log\\_weight}_g} g(z_g)`.
        log_prior: ``(G,)`` :math:`\\log p(z_g)`, the normalized prior density at the nodes.
    """

    z: Tensor
    log_weight: Tensor
    log_prior: Tensor

    @property
    def log_cell(self) -> Tensor:
        """``(G,)`` log trapezoid weights :math:`\\log c_g` (:math:`\\int g\\, dz \\approx \\sum_g c_g g(z_g)`)."""
        return self.log_weight - self.log_prior

    def to(self, like: Tensor) -> LatentGrid:
        """The grid on ``like``'s device and in its dtype."""
        return LatentGrid(*(t.to(like.device, like.dtype) for t in self))


def _axis(low: float, high: float, num_points: int) -> tuple[Tensor, Tensor]:
    """Nodes and log trapezoid weights on ``[low, high]``, as in ``grid_log_likelihood``."""
    u = torch.linspace(low, high, num_points, dtype=torch.float64)
    w = torch.full_like(u, (high - low) / (num_points - 1))
    w[0] = w[-1] = w[0] / 2
    return u, w.log()


def latent_grid(
    latent_dim: int,
    num_points: int | None = None,
    low: float | Sequence[float] | None = None,
    high: float | Sequence[float] | None = None,
    log_prior: Callable[[Tensor], Tensor] | None = None,
) -> LatentGrid:
    """A trapezoid grid on ``[low, high]^d`` (``d = 1, 2``) with the prior's density at the nodes (float64).

    With the default standard-normal prior in ``d = 1`` the nodes and weights are those of
    :func:`~pyro_mapa.evaluation.gauss_legendre_grid`, so sums over the grid reproduce
    :func:`~pyro_mapa.evaluation.quadrature_log_likelihood`; otherwise those of
    :func:`~pyro_mapa.evaluation.grid_log_likelihood` (same ``num_points`` per dimension).

    Arguments:
        latent_dim: ``d``, 1 or 2.
        num_points: Nodes per dimension (default 2001 for ``d = 1``, 301 for ``d = 2``).
        low, high: Bounds, one number for every dimension or one per dimension
            (default ``±8`` for ``d = 1``, ``±7`` for ``d = 2``). They must hold
            essentially all of the prior's mass.
        log_prior: Normalized log density ``(..., d) -> (...)`` (default: standard normal).
    """
    d = check_positive_int(latent_dim, "latent_dim")
    if d > 2:
        raise ValueError(f"a grid needs latent_dim 1 or 2, got {d}; use importance_log_marginal for d > 2")
    num = check_positive_int((2001 if d == 1 else 301) if num_points is None else num_points, "num_points")
    if num < 2:
        raise ValueError(f"num_points must be >= 2, got {num}")
    default = 8.0 if d == 1 else 7.0
    lows = [float(v) for v in (low if isinstance(low, Sequence) else [-default if low is None else low] * d)]
    highs = [float(v) for v in (high if isinstance(high, Sequence) else [default if high is None else high] * d)]
    if len(lows) != d or len(highs) != d:
        raise ValueError(f"low and high need {d} entries, got {lows} and {highs}")
    for lo, hi in zip(lows, highs):
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"need finite bounds with high > low on every dimension, got {lo} and {hi}")
    if d == 1 and log_prior is None:
        u, log_w = gauss_legendre_grid(num, lows[0], highs[0])
        z = u.unsqueeze(-1)
        return LatentGrid(z, log_w, standard_normal_log_prob(z))
    axes = [_axis(lo, hi, num) for lo, hi in zip(lows, highs)]
    if d == 1:
        z, log_cell = axes[0][0].unsqueeze(-1), axes[0][1]
    else:
        za, zb = torch.meshgrid(axes[0][0], axes[1][0], indexing="ij")
        z = torch.stack([za.reshape(-1), zb.reshape(-1)], -1)
        log_cell = (axes[0][1].unsqueeze(1) + axes[1][1].unsqueeze(0)).reshape(-1)
    lp = (log_prior or standard_normal_log_prob)(z).to(torch.float64)
    if lp.shape != log_cell.shape:
        raise ValueError(f"log_prior must map ({len(z)}, {d}) nodes to shape ({len(z)},), got {tuple(lp.shape)}")
    return LatentGrid(z, log_cell + lp, lp)


def _resolve_grid(grid: LatentGrid | None, latent_dim: int | None, like: Tensor) -> LatentGrid:
    if grid is None:
        if latent_dim is None:
            raise ValueError("pass grid=latent_grid(...) or latent_dim (1 or 2)")
        grid = latent_grid(latent_dim)
    if not isinstance(grid, LatentGrid):
        raise TypeError(f"grid must be a LatentGrid (from latent_grid), got {type(grid).__name__}")
    if latent_dim is not None and grid.z.shape[-1] != latent_dim:
        raise ValueError(f"the grid has latent dimension {grid.z.shape[-1]}, but latent_dim={latent_dim}")
    return grid.to(like)


def _row_blocks(x: Tensor, num_nodes: int, max_elements: int = _MAX_ELEMENTS) -> list[Tensor]:
    """Blocks of data points so that a block's ``(b, G, D)`` likelihood terms stay under ``max_elements``."""
    rows = max(1, max_elements // max(1, num_nodes * x[0].numel()))
    return list(x.split(rows))


def _decode(decode: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    params = decode(z)
    if not isinstance(params, Tensor) or params.shape[0] != z.shape[0]:
        raise ValueError(f"decode must map ({z.shape[0]}, d) latents to ({z.shape[0]}, ...) likelihood parameters")
    return params


def grid_log_marginal(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    grid: LatentGrid | None = None,
    *,
    latent_dim: int | None = None,
) -> Tensor:
    """Per-point :math:`\\log \\int p(x \\mid \\mathrm{decode}(z))\\, p(z)\\, dz` on a grid, **differentiable** in ``decode``.

    The decoder runs once on the ``G`` nodes; the ``n × G`` log-likelihood terms are reduced in
    blocks of data points. Memory is ``O(nG)`` when gradients are recorded.

    Arguments:
        x: ``(n, D)`` observations (their dtype and device are used throughout).
        decode: Maps ``(G, d)`` latents to ``(G, ...)`` likelihood parameters.
        likelihood: The observation model.
        grid: From :func:`latent_grid` (default ``latent_grid(latent_dim)``).
        latent_dim: ``d`` when no grid is given.

    Returns:
        An ``(n,)`` tensor in ``x.dtype``.
    """
    x = check_data(x)
    grid = _resolve_grid(grid, latent_dim, x)
    params = _decode(decode, grid.z)
    out = [
        torch.logsumexp(index_log_likelihood(xb, params, likelihood, len(xb)) + grid.log_weight, dim=1)
        for xb in _row_blocks(x, len(grid.z))
    ]
    return torch.cat(out)


@dataclass
class GridPosterior:
    """The exact posterior :math:`p_\\theta(z \\mid x_n)` of ``n`` points on a grid.

    Attributes:
        grid: The :class:`LatentGrid`.
        log_lik: ``(n, G)`` :math:`\\ell_{ng} = \\log p_\\theta(x_n \\mid z_g)`.
        log_px: ``(n,)`` :math:`\\log p_\\theta(x_n)`.
    """

    grid: LatentGrid
    log_lik: Tensor
    log_px: Tensor

    def log_weights(self) -> Tensor:
        """``(n, G)`` log posterior masses :math:`\\log \\pi_{ng}` of the grid cells (each row sums to 1)."""
        return self.log_lik + self.grid.log_weight - self.log_px.unsqueeze(-1)

    def log_density(self) -> Tensor:
        """``(n, G)`` :math:`\\log p_\\theta(z_g \\mid x_n) = \\ell_{ng} + \\log p(z_g) - \\log p_\\theta(x_n)`."""
        return self.log_lik + self.grid.log_prior - self.log_px.unsqueeze(-1)

    def mean(self) -> Tensor:
        """``(n, d)`` posterior means :math:`\\sum_g \\pi_{ng} z_g`."""
        return self.log_weights().exp() @ self.grid.z

    def covariance(self) -> Tensor:
        """``(n, d, d)`` posterior covariances."""
        pi, z = self.log_weights().exp(), self.grid.z
        centred = z.unsqueeze(0) - self.mean().unsqueeze(1)  # (n, G, d)
        return torch.einsum("ng,ngi,ngj->nij", pi, centred, centred)

    def kl_to_prior(self) -> Tensor:
        """``(n,)`` :math:`\\mathrm{KL}(p_\\theta(z \\mid x_n) \\,\\|\\, p(z))` on the grid.

        The discrete divergence :math:`\\sum_g \\pi_{ng} \\log(\\pi_{ng} / \\bar p_g)` between the
        posterior's and the prior's cell masses (:math:`\\bar p = \\operatorname{softmax}(\\log c + \\log p)`):
        never negative, and zero (to rounding) when :math:`\\ell_{ng}` does not depend on ``g``,
        i.e. exactly when the posterior has collapsed onto the prior.
        """
        log_pi = torch.log_softmax(self.log_lik + self.grid.log_weight, dim=-1)
        log_prior = torch.log_softmax(self.grid.log_weight, dim=-1)
        return (log_pi.exp() * (log_pi - log_prior)).sum(-1).clamp_min(0)


def exact_posterior(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    grid: LatentGrid | None = None,
    *,
    latent_dim: int | None = None,
) -> GridPosterior:
    """The exact posterior :math:`p_\\theta(z \\mid x) \\propto p(x \\mid \\mathrm{decode}(z))\\, p(z)` of each point on a grid.

    Holds the ``(n, G)`` log-likelihood matrix: for large ``n·G`` call it on blocks of ``x``.
    Runs with gradients if they are enabled.

    Arguments:
        x: ``(n, D)`` observations.
        decode: Maps ``(G, d)`` latents to likelihood parameters; for a model with a
            recovered prior pass the decoder composed with the prior's transform of
            standard-normal latents and keep the default standard-normal grid.
        likelihood: The observation model.
        grid: From :func:`latent_grid` (default ``latent_grid(latent_dim)``).
        latent_dim: ``d`` when no grid is given.
    """
    x = check_data(x)
    grid = _resolve_grid(grid, latent_dim, x)
    params = _decode(decode, grid.z)
    log_lik = torch.cat([index_log_likelihood(xb, params, likelihood, len(xb)) for xb in _row_blocks(x, len(grid.z))])
    return GridPosterior(grid, log_lik, torch.logsumexp(log_lik + grid.log_weight, dim=1))


def _grid_log_q(q: Distribution, grid: LatentGrid, n: int) -> Tensor:
    """``(n, G)`` :math:`\\log q(z_g \\mid x_n)` for a distribution with batch shape ``(n,)`` and event ``(d,)``."""
    if not isinstance(q, Distribution):
        raise TypeError(f"q must be a torch Distribution over (n, d) latents, got {type(q).__name__}")
    d = grid.z.shape[-1]
    if tuple(q.batch_shape) != (n,) or tuple(q.event_shape) != (d,):
        raise ValueError(
            f"q must have batch shape ({n},) and event shape ({d},), got {tuple(q.batch_shape)} and "
            f"{tuple(q.event_shape)} (wrap a Normal with .to_event(1))"
        )
    return q.log_prob(grid.z.unsqueeze(1)).T.to(grid.z.dtype)


def grid_log_masses(q: Distribution, grid: LatentGrid, mass_tol: float | None = 1e-2) -> Tensor:
    """``(n, G)`` log cell masses :math:`\\log \\rho_{ng}` of ``q(z | x_n)`` on the grid, rows normalized.

    Raises:
        GridMassError: (a ``ValueError``) a row's unnormalized mass :math:`\\sum_g c_g q(z_g \\mid x_n)` differs from 1
            by more than ``mass_tol``: ``q`` is narrower than the grid spacing or reaches
            outside the grid, and no sum over this grid represents it.
    """
    n = q.batch_shape[0] if isinstance(q, Distribution) and len(q.batch_shape) == 1 else -1
    log_q = _grid_log_q(q, grid, n) + grid.log_cell
    log_mass = torch.logsumexp(log_q, dim=-1, keepdim=True)
    if mass_tol is not None:
        worst = float((log_mass.exp() - 1).abs().max())
        if not worst <= mass_tol:
            raise GridMassError(
                f"q(z|x) has grid mass off by {worst:.3g} (> mass_tol={mass_tol}): it is narrower than the grid "
                "spacing or reaches outside the grid; use a finer or wider latent_grid(num_points=..., low=..., high=...)"
            )
    return log_q - log_mass


def kl_to_posterior(q: Distribution, posterior: GridPosterior, *, mass_tol: float | None = 1e-2) -> Tensor:
    """``(n,)`` :math:`\\mathrm{KL}(q(z \\mid x_n) \\,\\|\\, p_\\theta(z \\mid x_n))` by quadrature on the posterior's grid.

    The discrete divergence :math:`\\sum_g \\rho_{ng} \\log(\\rho_{ng} / \\pi_{ng})` between the
    cell masses of ``q`` and of the exact posterior; it equals the continuous KL up to the
    grid error, is never negative, and is zero when ``q`` is the posterior.

    Arguments:
        q: The guide's distribution for the same ``n`` points, batch shape ``(n,)`` and event
            shape ``(d,)`` (e.g. ``MeanFieldGuide.distribution(x)``).
        posterior: From :func:`exact_posterior`.
        mass_tol: See :func:`grid_log_masses` (``None``: no check).
    """
    log_rho = grid_log_masses(q, posterior.grid, mass_tol)
    if log_rho.shape != posterior.log_lik.shape:
        raise ValueError(f"q covers {log_rho.shape[0]} points, the posterior {posterior.log_lik.shape[0]}")
    return (log_rho.exp() * (log_rho - posterior.log_weights())).sum(-1).clamp_min(0)


def importance_log_marginal(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    latent_dim: int,
    num_samples: int = 1000,
    *,
    proposal: Proposal | None = None,
    generator: torch.Generator | None = None,
) -> ImportanceEstimate:
    """Per-point :math:`\\log \\hat p_\\theta(x) = \\log \\frac1S \\sum_s p(x \\mid \\mathrm{decode}(z_s))\\, p(z_s) / q(z_s \\mid x)`, differentiable in ``decode``.

    The ``S`` draws come from a *fixed* proposal (default: the standard-normal prior, so
    :math:`w_s = p(x \\mid \\mathrm{decode}(z_s))`); no gradient flows into the proposal.

    Bias: :math:`\\hat p` is unbiased, so :math:`\\mathbb E \\log \\hat p \\le \\log p(x)`
    (Jensen); the gap is :math:`\\approx \\mathrm{se}^2/2 = O(1/S)` (delta method) when the
    weights have finite variance, and it is exactly the gap of an IWAE bound whose proposal
    is not trained. Maximizing it therefore still favours decoders whose posterior is close
    to the proposal, by an amount that vanishes as ``S`` grows; with the prior as proposal
    and a sharp likelihood ``S`` must be large (watch ``stderr``). ``stderr`` is the
    delta-method standard error, as in :func:`~pyro_mapa.evaluation.importance_log_likelihood`
    (which evaluates without gradients).

    Arguments:
        x: ``(n, D)`` observations.
        decode: Maps ``(S, n, d)`` latents to ``(S, n, ...)`` likelihood parameters.
        likelihood: The observation model.
        latent_dim: ``d``.
        num_samples: ``S >= 2``; ``S·n`` decoder rows are held at once.
        proposal: A fixed :class:`~pyro_mapa.evaluation.Proposal` (e.g. from ``fit_proposal``).
        generator: For reproducible draws.

    Returns:
        :class:`~pyro_mapa.evaluation.ImportanceEstimate` with ``log_px`` (differentiable),
        ``stderr`` (detached) and ``log_weights`` (``(n, S)``, detached).
    """
    x = check_data(x)
    d = check_positive_int(latent_dim, "latent_dim")
    s = check_positive_int(num_samples, "num_samples")
    if s < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {s}")
    with torch.no_grad():
        if proposal is None:
            z = torch.randn((s, x.shape[0], d), generator=generator, dtype=x.dtype, device=x.device)
            log_q = standard_normal_log_prob(z)
        else:
            z = proposal.sample(x, s, generator).to(x.dtype)
            if z.shape != (s, x.shape[0], d):
                raise ValueError(f"proposal.sample returned shape {tuple(z.shape)}, expected ({s}, {x.shape[0]}, {d})")
            log_q = proposal.log_prob(z, x).to(x.dtype)
    log_w = (log_joint(x, z, decode, standard_normal_log_prob, likelihood) - log_q).T  # (n, S)
    lse = torch.logsumexp(log_w, dim=-1)
    with torch.no_grad():
        lw = log_w.detach()
        excess = torch.expm1(math.log(s) + torch.logsumexp(2 * lw, dim=-1) - 2 * lse.detach()).clamp_min(0)
        stderr = torch.sqrt(excess / (s - 1))
    return ImportanceEstimate(lse - math.log(s), stderr, lw)
