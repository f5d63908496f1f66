"""The one place that knows ArviZ's version differences (0.x InferenceData vs 1.x DataTree).

ArviZ 0.23 (what pip installs on Python 3.11) is tested in CI. The 1.x branches
(``arviz_base.from_dict(dict_of_groups, ...)``, ``psislw`` on negated log weights, the
``ELPDData`` dataclass of ``arviz_stats`` and its ``compare``) were checked by running
``tests/diagnostics/test_arviz_compat.py`` under Python 3.12 with ArviZ 1.3
(``python -m pytest --noconftest -p no:cacheprovider tests/diagnostics/test_arviz_compat.py``:
it needs only NumPy and ArviZ).

=====================  ===============================  ===================================
what                   ArviZ 0.x                        ArviZ 1.x
=====================  ===============================  ===================================
groups -> data         ``arviz.from_dict(**groups)``    ``arviz_base.from_dict(groups)``
PSIS k̂ of log weights  ``arviz.psislw(lw)``             ``array_stats.psislw(-lw)``
ELPD container         ``ELPDData`` (a pandas Series:   ``ELPDDataLOO`` (a dataclass:
                       ``elpd_loo``, ``loo_i``, ...)    ``elpd``, ``elpd_i``, ...)
compare table columns  ``elpd_loo``, ``p_loo``, ...     ``elpd``, ``p``, ... (rounded by
                                                        default: :func:`compare` asks for none)
=====================  ===============================  ===================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ARVIZ_MAJOR", "ELPD_COLUMN", "compare", "elpd_data", "elpd_pointwise", "from_groups", "good_k", "pareto_k"]


def _major() -> int:
    """ArviZ's major version, read from the installed package's metadata (importing ArviZ takes seconds)."""
    from importlib.metadata import version

    return int(version("arviz").split(".")[0])


ARVIZ_MAJOR = _major()
#: The elpd column of the ``az.compare`` table.
ELPD_COLUMN = "elpd_loo" if ARVIZ_MAJOR < 1 else "elpd"


def from_groups(groups: dict[str, dict[str, np.ndarray]], dims: dict[str, list[str]], coords: dict[str, Any]):
    """Builds ArviZ data from ``{"posterior": {...}, "sample_stats": {...}, ...}``."""
    if ARVIZ_MAJOR < 1:
        import arviz

        return arviz.from_dict(**groups, dims=dims, coords=coords)
    from arviz_base import from_dict  # ArviZ >= 1.0

    return from_dict(groups, dims=dims, coords=coords)


def pareto_k(log_weights: np.ndarray) -> np.ndarray:
    """PSIS Pareto shape k̂ per row of ``(n, S)`` log importance weights (the ``S`` axis last).

    Rows must not be constant (the generalized Pareto fit to a tail of equal values is
    undefined: ArviZ 0.x divides by zero, 1.x raises); the caller screens them out.
    """
    if ARVIZ_MAJOR < 1:
        import arviz

        return np.asarray(arviz.psislw(log_weights)[1])
    # ArviZ >= 1.0: the array-level psislw takes *negated* log weights (as loo's -log_lik),
    # checked against a Pareto(2) tail (k = 0.5) in tests/diagnostics/test_arviz_compat.py.
    from arviz_stats.base.array import array_stats

    return np.asarray(array_stats.psislw(-np.asarray(log_weights))[1])


def good_k(num_samples: int) -> float:
    """ArviZ's k̂ threshold for ``S`` draws, :math:`\\min(1 - 1/\\log_{10} S, 0.7)` (0.7 for ``S <= 10``)."""
    return min(1 - 1 / math.log10(num_samples), 0.7) if num_samples > 10 else 0.7


def elpd_data(
    pointwise: np.ndarray,
    *,
    num_samples: int,
    pareto_k: np.ndarray | None = None,
    dim: str = "obs",
):
    """ArviZ's ELPD container for given pointwise log predictive densities, as ``az.compare`` takes it.

    ``elpd = sum(pointwise)``, ``se = sqrt(n * var(pointwise))`` (what ``az.loo`` reports),
    ``p = 0`` (no in-sample optimism to correct: the points are held out), kind ``"loo"``
    (the only kind both ArviZ lines compare), scale ``"log"``. ``warning`` is set when
    any ``pareto_k`` exceeds :func:`good_k` of ``num_samples``.

    Arguments:
        pointwise: ``(n,)`` finite :math:`\\log p(x_n)`.
        num_samples: Draws per point behind each value (0 for an exact value).
        pareto_k: ``(n,)`` PSIS k̂ of each point's importance weights, or ``None``.
        dim: Name of the observation dimension.
    """
    import xarray as xr

    values = np.asarray(pointwise, dtype=np.float64).reshape(-1)
    n = values.size
    elpd, se = float(values.sum()), float(math.sqrt(n * values.var()))
    threshold = good_k(num_samples)
    k = None if pareto_k is None else xr.DataArray(np.asarray(pareto_k, dtype=np.float64), dims=[dim])
    warning = bool(k is not None and np.any(k.values > threshold))
    if ARVIZ_MAJOR < 1:
        from arviz.stats.stats_utils import ELPDData

        data = [elpd, se, 0.0, num_samples, n, warning, xr.DataArray(values, dims=[dim], name="loo_i")]
        index = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i"]
        if k is not None:
            data.append(k.rename("pareto_shape"))
            index.append("pareto_k")
        return ELPDData(data=data + ["log", threshold], index=index + ["scale", "good_k"])
    import dataclasses

    try:
        from arviz_stats.utils import ELPDDataLOO as ELPDData  # arviz-stats >= 1.3: one class per kind
    except ImportError:  # pragma: no cover - earlier 1.x: one ELPDData class with a ``kind`` field
        from arviz_stats.utils import ELPDData
    fields = {"elpd": elpd, "se": se, "p": 0.0, "n_samples": num_samples, "n_data_points": n, "scale": "log",
              "warning": warning, "good_k": threshold, "elpd_i": xr.DataArray(values, dims=[dim]), "pareto_k": k}
    if any(f.name == "kind" and f.init for f in dataclasses.fields(ELPDData)):
        fields["kind"] = "loo"
    return ELPDData(**fields)


def elpd_pointwise(elpd) -> np.ndarray:
    """The ``(n,)`` pointwise values inside an ELPD container."""
    return np.asarray(elpd["loo_i"] if ARVIZ_MAJOR < 1 else elpd.elpd_i).reshape(-1)


def compare(elpds: dict[str, Any]):
    """``az.compare`` of precomputed ELPD containers: the table as ArviZ makes it (``az.plot_compare`` takes it).

    Best model first in both lines, with ``rank``, ``elpd_diff``, ``dse``, ``se``, ``weight``;
    the elpd column is :data:`ELPD_COLUMN`. ``elpd_diff`` is best minus model (>= 0) in 0.x,
    model minus best (<= 0) in 1.x; 0.x has a boolean ``warning`` column, 1.x a text
    ``diag_elpd``. 1.x rounds the table unless told not to: it is asked for full precision.
    """
    if ARVIZ_MAJOR < 1:
        import warnings

        import arviz

        with warnings.catch_warnings():
            # ArviZ 0.x calls DataFrame.sort_values(inplace=True), which pandas >= 3.1 deprecates.
            warnings.filterwarnings("ignore", message="The inplace keyword", category=DeprecationWarning)
            # One model: its weight is 1 under every method, and ArviZ 0.18's stacking optimizer fails
            # on an empty set of free weights, so take the closed-form pseudo-BMA weights.
            return arviz.compare(elpds, method="pseudo-BMA" if len(elpds) == 1 else "stacking")
    import inspect

    from arviz_stats import compare as _compare

    if "round_to" in inspect.signature(_compare).parameters:
        return _compare(elpds, round_to="none")
    return _compare(elpds)  # pragma: no cover - arviz-stats < 1.3 does not round
