r"""The base of the per-point importance-weighted ELBOs: ``TraceIWAE_ELBO`` and ``TraceMAPA_ELBO``.

Both estimate :math:`\log p(X)` from ``P`` particles per data point of the *data plate*:

.. math::
    L = G + s \sum_{n \in B} \Big( \log \sum_{p=1}^P w_{n,p} - \log Z \Big),

with :math:`\log w_{n,p}` a point's per-particle log-weights (every other plate around a point
summed within it), :math:`G` the global terms (sites outside the data plate), counted once per
step, :math:`s` the data plate's one scale (``N/|B|`` under subsampling), applied *after* each
point's logsumexp so that the estimate stays a lower bound in expectation, and :math:`Z` a
normalizer (``P`` for the IWAE's log-mean-exp; none for MAPA, whose weights carry their own).

An estimator subclasses :class:`PerPointImportanceELBO` and supplies its per-point terms
(:meth:`~PerPointImportanceELBO._per_point`: its site loop, giving a :class:`PerPointTerms`) and
the detail of its non-finite-loss error (:meth:`~PerPointImportanceELBO._non_finite_detail`); the
base reduces the terms to the estimate and gives Pyro's ``ELBO`` API (``loss``,
``loss_and_grads``, ``differentiable_loss``), each reading the loss on the host once, which is
also its finiteness check. The site-level pieces both site loops share (the data plate's one
scale, per-point sums) are in :mod:`._importance_sites`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..errors import NonFiniteLossError
from ._pyro_compat import QuietNestingGuess

__all__ = ["PerPointImportanceELBO", "PerPointTerms", "drop_negligible", "negligible_log_ratio"]


def negligible_log_ratio(dtype: torch.dtype) -> float:
    """``-2 log eps``: how far (in nats) below a point's largest log-weight a weight stops mattering.

    A particle whose normalized weight is below :math:`\\epsilon^2` (float32: 1.4e-14, a gap of
    31.9 nats; float64: 72.1 nats) changes neither the bound nor its gradient at the dtype's
    precision, yet in the backward pass its weight times the likelihood's gradient becomes
    a subnormal number once the gap exceeds about 87 nats (float32), and subnormal operands
    make the matrix products of the networks' backward pass many times slower on CPUs
    without hardware support for them.
    """
    return -2.0 * math.log(torch.finfo(dtype).eps)


def drop_negligible(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log_w`` with ``-inf`` where :math:`w / \\max w < \\epsilon^2` along ``dim`` (no host sync).

    .. math:: \\tilde\\ell_p = \\ell_p \\text{ if } \\ell_p \\ge \\max_q \\ell_q - 2\\log(1/\\epsilon), \\quad -\\infty \\text{ otherwise.}

    The logsumexp of the result equals that of ``log_w`` to within a relative
    :math:`P\\epsilon^2` of the sum, and the gradient reaching a dropped entry is an
    exact zero (``masked_fill``), so no subnormal weight enters the backward pass. NaN
    entries are kept (they propagate as before); a slice whose maximum is ``-inf`` is
    left unchanged.
    """
    with torch.no_grad():
        floor = log_w.amax(dim=dim, keepdim=True) - negligible_log_ratio(log_w.dtype)
        drop = log_w < floor
    return log_w.masked_fill(drop, -math.inf)


class PerPointTerms(NamedTuple):
    """One step's per-point terms, as an estimator's site loop leaves them.

    Attributes:
        log_w: ``(P, B)`` log-weights :math:`\\log w_{n,p}`, or ``None`` without local sites
            (the estimate is then :math:`G` alone).
        scale: :math:`s`, the data plate's one scale (a number, or a tensor that broadcasts).
        global_lp: :math:`G`, the global terms, counted once.
        log_norm: :math:`\\log Z`, subtracted from each point's logsumexp, or ``None`` for none.
        mask: ``(B,)`` booleans, the points that count (``None``: all of them).
        detail: What the estimator needs besides (its error detail, its gradients).
    """

    log_w: Tensor | None
    scale: Any
    global_lp: Tensor | float
    log_norm: float | None = None
    mask: Tensor | None = None
    detail: Any = None


class PerPointImportanceELBO(QuietNestingGuess, ELBO):
    """A Pyro ``ELBO`` whose estimate is a sum over the data plate's points of a logsumexp of particles.

    .. math::
        L = G + s \\sum_{n \\in B} \\Big( \\log \\sum_{p=1}^P w_{n,p} - \\log Z \\Big)

    (see the module's docstring). Weights below :math:`\\epsilon^2` of their point's largest
    are dropped first (:func:`drop_negligible`). Subclasses implement :meth:`_per_point` and
    :meth:`_non_finite_detail`, set :attr:`_name` (the loss's name in error messages) and may
    override :meth:`_backward` (their own gradient estimator in :meth:`loss_and_grads`).
    """

    _name = "importance-weighted"

    def _per_point(self, model, guide, args: tuple, kwargs: dict, grads: bool = False) -> PerPointTerms:
        """One step's per-point terms; ``grads``: asked by :meth:`loss_and_grads` (for :meth:`_backward`)."""
        raise NotImplementedError

    def _non_finite_detail(self, terms: PerPointTerms) -> str:
        """What the error of a non-finite loss says after the loss's value: which term is at fault."""
        raise NotImplementedError

    def _estimate_from(self, terms: PerPointTerms) -> Tensor:
        """:math:`L` from the terms: a differentiable scalar."""
        if terms.log_w is None:
            return torch.as_tensor(terms.global_lp)
        # Weights below eps² of a point's largest are dropped: the same bound to the dtype's
        # precision, and no subnormal weight reaches the networks' backward matrix products.
        per_point = torch.logsumexp(drop_negligible(terms.log_w), dim=0)
        if terms.log_norm is not None:
            per_point = per_point - terms.log_norm
        if terms.mask is not None:
            per_point = torch.where(terms.mask, per_point, torch.zeros_like(per_point))
        return terms.scale * per_point.sum() + terms.global_lp

    def _raise_non_finite(self, value: float, terms: PerPointTerms) -> None:
        raise NonFiniteLossError(f"the {self._name} loss is {value}; {self._non_finite_detail(terms)}")

    def _checked_value(self, loss: Tensor, terms: PerPointTerms) -> float:
        """``float(loss)``, raising :class:`NonFiniteLossError` if it is not finite: one host sync."""
        value = float(loss.detach())
        if not math.isfinite(value):
            self._raise_non_finite(value, terms)
        return value

    def _backward(self, loss: Tensor, terms: PerPointTerms) -> None:
        """Accumulates the gradients of ``loss`` (minus the estimate) into the parameters' ``.grad``."""
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """``-L`` as a differentiable scalar tensor (its finiteness check reads it: one host sync)."""
        terms = self._per_point(model, guide, args, kwargs)
        loss = -self._estimate_from(terms)
        self._checked_value(loss, terms)
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """``-L`` as a float, without gradients."""
        with torch.no_grad():
            terms = self._per_point(model, guide, args, kwargs)
            return self._checked_value(-self._estimate_from(terms), terms)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """``-L`` as a float; its gradients are accumulated into the parameters' ``.grad``.

        Reading the float (which Pyro's ``SVI.step`` returns) is the step's one host sync
        in the estimator; the finiteness check uses it.
        """
        terms = self._per_point(model, guide, args, kwargs, grads=True)
        loss = -self._estimate_from(terms)
        value = self._checked_value(loss, terms)
        self._backward(loss, terms)
        return value
