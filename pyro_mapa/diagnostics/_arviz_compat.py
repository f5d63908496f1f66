"""The one place that knows ArviZ's version differences (0.x InferenceData vs 1.x DataTree).

ArviZ 0.23 (what pip installs on Python 3.11) is tested in CI. The 1.x branch
(``arviz_base.from_dict(dict_of_groups, ...)``, ``psislw`` on negated log weights) was
checked by running ``tests/test_arviz_compat.py`` under Python 3.12 with ArviZ 1.3
(``python -m pytest --noconftest tests/test_arviz_compat.py``: it needs only NumPy and ArviZ).
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
    # ArviZ >= 1.0: the array-level psislw takes *negated* log weights (as loo's -log_lik),
    # checked against a Pareto(2) tail (k = 0.5) in tests/test_arviz_compat.py.
    from arviz_stats.base.array import array_stats

    return np.asarray(array_stats.psislw(-np.asarray(log_weights))[1])
