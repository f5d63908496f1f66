"""Importance sampling for any latent dimension (docs/method.md §7, App. D.1).

:func:`importance_log_likelihood` estimates :math:`\\log p(x)` with a Monte-Carlo standard
error and keeps the log-weights for diagnostics; :func:`stratified_iwae_bound` is the
differentiable bound that :func:`~pyro_mapa.evaluation.fit_proposal` maximizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import check_nonnegative_int
from ..models.likelihoods import Likelihood
from .proposal import MixtureProposal, Proposal

__all__ = [
    "ImportanceEstimate",
    "check_data",
    "importance_from_log_joint",
    "importance_log_likelihood",
    "log_joint",
    "stratified_iwae_bound",
]


class ImportanceEstimate(NamedTuple):
    """Result of :func:`importance_log_likelihood`, per data point.

    Attributes:
        log_px: ``(n,)`` estimates :math:`\\log \\hat p(x) = \\log \\frac1S \\sum_s w_s`.
        stderr: ``(n,)`` Monte-Carlo standard errors of ``log_px`` (delta method).
        log_weights: ``(n, S)`` raw log-weights :math:`\\log w_s` (e.g. for a
            Pareto-:math:`\\hat k` diagnostic), or ``None`` if not kept.
    """

    log_px: Tensor
    stderr: Tensor
    log_weights: Tensor | None

    @property
    def ess(self) -> Tensor:
        """``(n,)`` effective sample sizes :math:`(\\sum_s w_s)^2 / \\sum_s w_s^2` (needs ``log_weights``)."""
        if self.log_weights is None:
            raise ValueError("the log-weights were not kept (keep_log_weights=False)")
        lw = self.log_weights
        return torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))


def log_joint(x: Tensor, z: Tensor, decode, log_prior, likelihood: Likelihood) -> Tensor:
    """:math:`\\log p(x \\mid \\mathrm{decode}(z)) + \\log p(z)` for ``z`` ``(..., n, d)``; ``(..., n)``."""
    try:
        ll = likelihood(decode(z)).log_prob(x)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"likelihood(decode(z)).log_prob(x) failed for z of shape {tuple(z.shape)} and x of shape "
            f"{tuple(x.shape)}: decode must map (..., d) latents to (..., D) parameters ({e})"
        ) from e
    lp = log_prior(z)
    if ll.shape != z.shape[:-1]:
        raise ValueError(
            f"likelihood(decode(z)).log_prob(x) has shape {tuple(ll.shape)}, expected {tuple(z.shape[:-1])}: "
            "decode must map (..., d) latents to (..., D) parameters"
        )
    if lp.shape != z.shape[:-1]:
        raise ValueError(f"log_prior(z) has shape {tuple(lp.shape)}, expected {tuple(z.shape[:-1])}")
    return ll + lp


def check_data(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, D), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, D) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def stratified_iwae_bound(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    proposal: MixtureProposal,
    num_per_component: int = 1,
    generator: torch.Generator | None = None,
    *,
    joint: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-point stratified-mixture IWAE bound (Morningstar et al., 2021), differentiable in the proposal.

    With ``T`` reparameterized draws :math:`z_{k,t} \\sim q_k(\\cdot \\mid x)` from
    every component ``k`` of :math:`q = \\sum_k \\alpha_k q_k`,

    .. math::
        L(x) = \\log \\frac1T \\sum_{t=1}^T \\sum_{k=1}^K \\alpha_k
               \\frac{p(x \\mid \\mathrm{decode}(z_{k,t}))\\, p(z_{k,t})}{q(z_{k,t} \\mid x)} .

    The inner sum is unbiased for :math:`p(x)`
    (:math:`\\mathbb E\\,\\sum_k \\alpha_k w(z_k) = \\int \\sum_k \\alpha_k q_k\\, p / q = p(x)`),
    so :math:`\\mathbb E L \\le \\log p(x)`, with equality when every weight equals
    :math:`p(x)`. The component choice is summed over instead of sampled, so the
    gradient needs no score function: the mixture weights enter as :math:`\\alpha_k`
    and through :math:`q`, the draws by reparameterization.

    ``joint(x, z)`` (``z`` of any leading shape, ``(..., n, d) -> (..., n)``), if given,
    replaces ``decode``, ``log_prior`` and ``likelihood`` (then ``None``): the log joint
    of any model, e.g. a Pyro model's (:class:`~pyro_mapa.evaluation.PyroModelJoint`).

    Returns:
        An ``(n,)`` tensor.

    References:
        | Automatic Differentiation Variational Inference with Mixtures
        | (Morningstar, Vikram, Ham, Gallagher and Dillon, 2021) https://arxiv.org/abs/2003.01687
    """
    t = check_nonnegative_int(num_per_component, "num_per_component")
    if t < 1:
        raise ValueError(f"num_per_component must be >= 1, got {t}")
    z, log_alpha = proposal.rsample_components(x, t, generator)  # (T, K, n, d), (K, n)
    lj = _checked_joint(joint, x, z) if joint is not None else log_joint(x, z, decode, log_prior, likelihood)
    log_w = log_alpha + lj - proposal.log_prob(z, x)
    return torch.logsumexp(log_w.reshape(-1, x.shape[0]), dim=0) - math.log(t)


def importance_log_likelihood(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    proposal: Proposal,
    num_samples: int = 1000,
    *,
    chunk_size: int = 2**16,
    generator: torch.Generator | None = None,
    keep_log_weights: bool = True,
) -> ImportanceEstimate:
    """Per-point importance-sampling estimate of :math:`\\log p(x)` with its Monte-Carlo error.

    With ``S`` i.i.d. draws :math:`z_s \\sim q(\\cdot \\mid x)` and weights
    :math:`w_s = p(x \\mid \\mathrm{decode}(z_s))\\, p(z_s) / q(z_s \\mid x)`,

    .. math::
        \\log \\hat p(x) = \\log \\frac1S \\sum_s w_s, \\qquad
        \\mathrm{se} = \\frac{\\mathrm{sd}(w)}{\\sqrt S\\, \\bar w}
                    = \\sqrt{\\frac{S \\sum_s \\tilde w_s^2 - 1}{S - 1}},
        \\quad \\tilde w_s = w_s / \\textstyle\\sum_r w_r .

    :math:`\\hat p(x)` is unbiased for any proposal whose support covers the
    posterior's; :math:`\\log \\hat p(x)` is then biased low (Jensen) by about
    :math:`\\mathrm{se}^2 / 2`. ``se`` is the delta-method standard error of
    :math:`\\log \\hat p` (``sd`` with ``S - 1`` in the denominator), computed from
    the self-normalized weights in log space; it is only trustworthy when the
    weights have finite variance (check the Pareto :math:`\\hat k` of
    ``log_weights``). A proposal that misses a posterior mode underestimates
    :math:`\\log p(x)` without the standard error showing it. If every weight is
    zero, ``log_px`` is ``-inf`` and ``stderr`` is ``inf``. Runs without gradients.

    Arguments:
        x: ``(n, D)`` observations.
        decode: Maps ``(..., d)`` latents to ``(..., D)`` likelihood parameters.
        log_prior: Maps ``(..., d)`` latents to ``(...)`` log-densities.
        likelihood: The observation model (event dim 1).
        proposal: See :class:`Proposal`; e.g. from :func:`fit_proposal`.
        num_samples: ``S >= 2`` draws per point.
        chunk_size: Most (point, draw) pairs decoded at once.
        generator: For reproducible draws (default: the global RNG); it must live on
            ``x``'s device.
        keep_log_weights: Return the ``(n, S)`` log-weights.

    Returns:
        An :class:`ImportanceEstimate` ``(log_px, stderr, log_weights)``.

    Raises:
        ValueError: Malformed arguments, shapes that do not fit together, or NaN /
            ``+inf`` log-weights.
    """
    return importance_from_log_joint(
        x,
        lambda xb, z: log_joint(xb, z, decode, log_prior, likelihood),
        proposal,
        num_samples,
        chunk_size=chunk_size,
        generator=generator,
        keep_log_weights=keep_log_weights,
    )


def importance_from_log_joint(
    x: Tensor,
    joint: Callable[[Tensor, Tensor], Tensor],
    proposal: Proposal,
    num_samples: int = 1000,
    *,
    chunk_size: int = 2**16,
    generator: torch.Generator | None = None,
    keep_log_weights: bool = True,
) -> ImportanceEstimate:
    """:func:`importance_log_likelihood` for any model given as its per-point log joint.

    Arguments:
        x: ``(n, D)`` per-point features, passed to ``joint`` and to the proposal.
        joint: ``joint(x_b, z)`` with ``z`` ``(m, b, d)`` returns ``(m, b)`` values of
            :math:`\\log p(x_b, z)` (e.g. :class:`~pyro_mapa.evaluation.PyroModelJoint`
            for a Pyro model).
        proposal, num_samples, chunk_size, generator, keep_log_weights: As in
            :func:`importance_log_likelihood`.
    """
    x = check_data(x)
    s = check_nonnegative_int(num_samples, "num_samples")
    if s < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {s}")
    if check_nonnegative_int(chunk_size, "chunk_size") < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = x.shape[0]
    points = max(1, chunk_size // s)
    draws = min(s, chunk_size)
    rows = []
    with torch.no_grad():
        for start in range(0, n, points):
            xb = x[start : start + points]
            b = xb.shape[0]
            cols = []
            for done in range(0, s, draws):
                m = min(draws, s - done)
                z = proposal.sample(xb, m, generator)
                if z.dim() != 3 or z.shape[:2] != (m, b):
                    raise ValueError(
                        f"proposal.sample returned shape {tuple(z.shape)}, expected ({m}, {b}, d)"
                    )
                lq = proposal.log_prob(z, xb)
                if lq.shape != (m, b):
                    raise ValueError(
                        f"proposal.log_prob returned shape {tuple(lq.shape)}, expected ({m}, {b})"
                    )
                cols.append((_checked_joint(joint, xb, z) - lq).T)
            rows.append(torch.cat(cols, dim=1))
    log_w = torch.cat(rows, dim=0)  # (n, S)
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError(
            "log-weights contain NaN or +inf: check decode, log_prior and the proposal's support"
        )
    lse = torch.logsumexp(log_w, dim=-1)
    log_px = lse - math.log(s)
    # S * sum(w~^2) - 1 = expm1(log S + LSE(2 log w) - 2 LSE(log w)) >= 0, exact near 0.
    excess = torch.expm1(math.log(s) + torch.logsumexp(2 * log_w, dim=-1) - 2 * lse).clamp_min(0)
    stderr = torch.sqrt(excess / (s - 1))
    # Every weight zero: log p-hat = -inf with no usable error estimate.
    stderr = torch.where(torch.isneginf(lse), torch.full_like(stderr, math.inf), stderr)
    return ImportanceEstimate(log_px, stderr, log_w if keep_log_weights else None)


def _checked_joint(joint: Callable[[Tensor, Tensor], Tensor], x: Tensor, z: Tensor) -> Tensor:
    lj = joint(x, z)
    if not isinstance(lj, Tensor) or lj.shape != z.shape[:-1]:
        raise ValueError(
            f"the log joint returned shape {tuple(getattr(lj, 'shape', ()))}, expected {tuple(z.shape[:-1])}"
        )
    return lj
