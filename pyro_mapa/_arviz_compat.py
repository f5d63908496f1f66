"""The one place that knows ArviZ's version differences (0.x InferenceData vs 1.x DataTree).

ArviZ 0.23 (what pip installs on Python 3.11) is tested here; the 1.x branch follows the
``arviz_base.from_dict(dict_of_groups, ...)`` signature and is untested in CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ARVIZ_MAJOR", "from_groups", "pareto_k"]


def _major() -> int:
    import arviz

    return int(arviz.__version__.split(".")[0])


ARVIZ_MAJOR = _major()


def from_groups(groups: dict[str, dict[str, np.ndarray]], dims: dict[str, list[str]], coords: dict[str, Any]):
    """Builds ArviZ data from ``{"posterior": {...}, "log_likelihood": {...}, ...}``."""
    if ARVIZ_MAJOR < 1:
        import arviz

        return arviz.from_dict(**groups, dims=dims, coords=coords)
    from arviz_base import from_dict  # ArviZ >= 1.0

    return from_dict(groups, dims=dims, coords=coords)


def pareto_k(log_weights: np.ndarray) -> np.ndarray:
    """PSIS Pareto shape k̂ per row of ``(n, S)`` log importance weights (the ``S`` axis last)."""
    if ARVIZ_MAJOR < 1:
        import arviz

        return np.asarray(arviz.psislw(log_weights)[1])
    import arviz_stats  # ArviZ >= 1.0: psislw lives in arviz_stats

    return np.asarray(arviz_stats.psislw(log_weights)[1])
