"""Are importance weights trustworthy? Pareto k̂ (PSIS, via ArviZ) and Kish ESS, k̂ withheld where meaningless."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._arviz_compat import pareto_k

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "kish_ess"]


def kish_ess(log_weights: Tensor) -> Tensor:
    """Kish effective sample size :math:`(\\sum w)^2 / \\sum w^2` over the last dim, from log-weights."""
    return torch.exp(2 * log_weights.logsumexp(-1) - (2 * log_weights).logsumexp(-1))



@dataclass
class ImportanceDiagnostics:
    """Pareto k̂ and Kish ESS of per-point importance weights.

    k̂ (Vehtari et al., 2024): below 0.5 the weights have finite variance and the estimate
    is reliable; 0.5-0.7 usable with care; above 0.7 (more precisely
    :math:`\\min(1 - 1/\\log_{10} S, 0.7)`) the estimate is unreliable: use more samples
    or a better proposal. ``pareto_k`` is NaN where it is not meaningful: when the weights
    take few distinct values (a discrete proposal over a small set, e.g. MAPA's top-K
    plus a few remainder draws), the generalized Pareto fit to the tail is degenerate.
    """

    pareto_k: np.ndarray
    ess: np.ndarray
    meaningful: np.ndarray
    num_samples: int

    @property
    def k_threshold(self) -> float:
        return min(1 - 1 / math.log10(self.num_samples), 0.7) if self.num_samples > 10 else 0.7

    def summary(self) -> dict[str, float]:
        k = self.pareto_k[self.meaningful]
        return {
            "pareto_k_max": float(k.max()) if k.size else math.nan,
            "share_k_above_threshold": float((k > self.k_threshold).mean()) if k.size else math.nan,
            "k_threshold": self.k_threshold,
            "share_k_meaningful": float(self.meaningful.mean()),
            "ess_min": float(self.ess.min()),
            "ess_median": float(np.median(self.ess)),
        }


def importance_diagnostics(log_weights: Tensor | np.ndarray, min_distinct: int = 20) -> ImportanceDiagnostics:
    """Pareto k̂ (PSIS, computed by ArviZ) and Kish ESS for ``(n, S)`` log importance weights.

    Arguments:
        log_weights: One row of ``S`` log-weights per point.
        min_distinct: Fewer distinct weights than this in a row and its k̂ is reported
            as NaN (not meaningful) instead of ArviZ's degenerate value.
    """
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    if lw.dim() != 2 or lw.shape[1] < 2:
        raise ValueError(f"log_weights must have shape (n, S) with S >= 2, got {tuple(lw.shape)}")
    if torch.isnan(lw).any():
        raise ValueError("log_weights contain NaN")
    ess = kish_ess(lw).numpy()
    distinct = np.array([len(torch.unique(row)) for row in lw])
    meaningful = distinct >= min_distinct
    k = np.full(lw.shape[0], np.nan)
    if meaningful.any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ warns on large k̂; we report it instead
            k[meaningful] = pareto_k(lw[torch.from_numpy(meaningful)].numpy())
    return ImportanceDiagnostics(k, ess, meaningful, lw.shape[1])

