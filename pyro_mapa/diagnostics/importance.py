"""Are importance weights trustworthy? Pareto k̂ (PSIS, via ArviZ) and Kish ESS, k̂ withheld where meaningless.

References:
    | Yes, but Did It Work?: Evaluating Variational Inference
    | (Yao, Vehtari, Simpson and Gelman, ICML 2018) https://arxiv.org/abs/1802.02538
    | Pareto Smoothed Importance Sampling
    | (Vehtari, Simpson, Gelman, Yao and Gabry, JMLR 2024) https://arxiv.org/abs/1507.02646
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._arviz_compat import good_k, pareto_k

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "kish_ess"]


def kish_ess(log_weights: Tensor) -> Tensor:
    """Kish effective sample size :math:`(\\sum w)^2 / \\sum w^2` over the last dim, from log-weights."""
    return torch.exp(2 * log_weights.logsumexp(-1) - (2 * log_weights).logsumexp(-1))


@dataclass
class ImportanceDiagnostics:
    """Pareto k̂ and Kish ESS of per-point importance weights.

    k̂ is the shape of a generalized Pareto distribution fitted to the largest weights
    (Vehtari et al., 2024); Yao et al. (2018) use it to ask whether a variational
    proposal can be trusted. Below 0.5 the weights have finite variance and the estimate
    is reliable; 0.5-0.7 usable with care; above :attr:`k_threshold`
    (:math:`\\min(1 - 1/\\log_{10} S, 0.7)`) the estimate is unreliable: use more samples
    or a better proposal.

    Two special values:

    - ``-inf`` where a row's weights are all equal (to rounding): the proposal is the
      posterior, the weights are bounded and have no tail at all (the GPD shape tends to
      :math:`-\\infty`); ``ess`` is then ``S``.
    - ``NaN`` (and ``meaningful`` False) where the weights take few distinct values (a
      discrete proposal over a small set, e.g. MAPA's top-K plus a few remainder draws):
      a Pareto fit to such a tail is degenerate.

    ``az.plot_khat(diagnostics.pareto_k)`` plots the values (ArviZ drops the non-finite ones).
    """

    pareto_k: np.ndarray
    ess: np.ndarray
    meaningful: np.ndarray
    num_samples: int

    @property
    def k_threshold(self) -> float:
        return good_k(self.num_samples)

    def summary(self) -> dict[str, float]:
        k = self.pareto_k[self.meaningful]
        return {
            "pareto_k_max": float(k.max()) if k.size else math.nan,
            "pareto_k_median": float(np.median(k)) if k.size else math.nan,
            "share_k_above_threshold": float((k > self.k_threshold).mean()) if k.size else math.nan,
            "k_threshold": self.k_threshold,
            "share_k_meaningful": float(self.meaningful.mean()),
            "ess_min": float(self.ess.min()),
            "ess_median": float(np.median(self.ess)),
        }


def importance_diagnostics(log_weights: Tensor | np.ndarray, min_distinct: int = 20) -> ImportanceDiagnostics:
    """Pareto k̂ (PSIS, computed by ArviZ) and Kish ESS for ``(n, S)`` log importance weights.

    A row is constant when its spread :math:`\\max - \\min` is within 64 rounding units of
    its largest magnitude in the input's precision; its k̂ is ``-inf`` (no tail). ArviZ is
    given only the other rows, so no division by zero happens inside it.

    Arguments:
        log_weights: One row of ``S`` log-weights per point.
        min_distinct: Fewer distinct weights than this in a row and its k̂ is reported
            as NaN (not meaningful) instead of ArviZ's degenerate value.
    """
    lw_in = torch.as_tensor(log_weights)
    if not lw_in.is_floating_point():
        raise TypeError(f"log_weights must be floating point, got {lw_in.dtype}")
    lw = lw_in.to(torch.float64)
    if lw.dim() != 2 or lw.shape[1] < 2:
        raise ValueError(f"log_weights must have shape (n, S) with S >= 2, got {tuple(lw.shape)}")
    if torch.isnan(lw).any():
        raise ValueError("log_weights contain NaN")
    ess = kish_ess(lw).numpy()
    top = lw.max(-1).values
    spread = top - lw.min(-1).values
    scale = lw.abs().max(-1).values.clamp_min(1.0)
    constant = (torch.isfinite(top) & (spread <= 64 * torch.finfo(lw_in.dtype).eps * scale)).numpy()
    distinct = np.array([len(torch.unique(row)) for row in lw])
    fit = (distinct >= min_distinct) & ~constant
    k = np.full(lw.shape[0], np.nan)
    k[constant] = -np.inf
    if fit.any():
        k[fit] = pareto_k(lw[torch.from_numpy(fit)].numpy())
    return ImportanceDiagnostics(k, ess, fit | constant, lw.shape[1])
