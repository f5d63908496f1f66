"""The Henze–Zirkler multivariate-normality statistic, differentiable in the sample (a penalty for LiBI).

LiBI (Yacoby, Pan and Doshi-Velez, 2020) keeps amortized point codes ``Z = {h_ϕ(x_n)}`` looking like
draws from ``N(0, I)`` with a term ``ε_HZ · exp(HZ(Z))``; :func:`henze_zirkler` is that ``HZ``,
written in torch so that it can be back-propagated to ``Z``. :func:`henze_zirkler_test` adds the
test's p-value from the log-normal approximation of its null distribution.

Reference:
    | A class of invariant consistent tests for multivariate normality
    | (Henze and Zirkler, Communications in Statistics - Theory and Methods 19(10), 3595-3617, 1990)
    | https://doi.org/10.1080/03610929008830400
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import as_data_tensor

__all__ = ["HenzeZirklerTest", "henze_zirkler", "henze_zirkler_beta", "henze_zirkler_test"]


def henze_zirkler_beta(num_points: int, dim: int) -> float:
    """The standard smoothing parameter ``β = (1/√2) ((2d + 1) n / 4)^{1/(d + 4)}`` (Henze and Zirkler)."""
    return ((2 * dim + 1) * num_points / 4) ** (1 / (dim + 4)) / math.sqrt(2)


def _check_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a positive float or None (the standard β), got {type(beta).__name__}")
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite float or None (the standard value), got {beta!r}")
    return float(beta)


def _whiten(z: Tensor) -> Tensor:
    """``(z_j − z̄) L⁻ᵀ``, ``L Lᵀ = S`` the covariance normalized by ``n`` (as pingouin and Henze–Zirkler)."""
    n, d = z.shape
    if n < 2:
        raise ValueError(f"z must have at least 2 rows (points), got shape {tuple(z.shape)}")
    centred = z - z.mean(0)
    cov = centred.T @ centred / n
    # Singular (or numerically singular) covariance: the statistic is undefined. Affine-invariant check on
    # the eigenvalues, with NumPy's matrix_rank tolerance.
    eig = torch.linalg.eigvalsh(cov.detach())
    if n <= d or not bool(eig[0] > eig[-1] * d * torch.finfo(z.dtype).eps):
        raise ValueError(
            f"z has a singular sample covariance (shape {tuple(z.shape)}: n <= d, a constant column, or "
            "linearly dependent columns), so the Henze-Zirkler statistic is undefined; pass at least d + 1 "
            "points in general position, or drop the dependent columns"
        )
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError("z has a singular sample covariance (numerically); rescale z or drop dependent columns")
    return torch.linalg.solve_triangular(chol, centred.T, upper=False).T


def henze_zirkler(z: Tensor, beta: float | None = None) -> Tensor:
    r"""The Henze–Zirkler statistic ``HZ`` of the rows of ``z``, differentiable in ``z``.

    With ``S`` the sample covariance normalized by ``n`` (``np.cov(z, rowvar=False, bias=True)``, as in
    pingouin and the original paper), ``D_jk = (z_j − z_k)ᵀ S⁻¹ (z_j − z_k)`` and
    ``D_j = (z_j − z̄)ᵀ S⁻¹ (z_j − z̄)``:

    .. math::

        HZ = n \Big[ \frac{1}{n^2} \sum_{j,k} e^{-\beta^2 D_{jk} / 2}
             - \frac{2}{(1 + \beta^2)^{d/2}} \frac{1}{n} \sum_j e^{-\beta^2 D_j / (2 (1 + \beta^2))}
             + (1 + 2\beta^2)^{-d/2} \Big],

    the weighted L² distance between the empirical characteristic function of the standardized sample
    and the standard normal one, with weight ``N(0, β² I)``. It is invariant under ``z → zA + b``
    (``A`` invertible), near 0 for normal samples and grows with ``n`` for non-normal ones.

    Arguments:
        z: ``(n, d)`` floating tensor, one point per row; ``n ≥ d + 1`` points in general position.
        beta: The smoothing parameter; ``None`` (default) is the standard
            ``β = (1/√2) ((2d + 1) n / 4)^{1/(d + 4)}`` (:func:`henze_zirkler_beta`).

    Returns:
        A 0-dim tensor of ``z``'s dtype; ``HZ.backward()`` reaches ``z`` (through ``S`` too).

    Raises:
        TypeError: ``z`` not a floating tensor; ``beta`` not a number.
        ValueError: ``z`` not 2-D, fewer than 2 rows, NaN or inf, or a singular sample covariance;
            ``beta`` not positive and finite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> bool(henze_zirkler(torch.randn(200, 2, generator=g)) < 1.0)
        True
    """
    z = as_data_tensor(z, "z")
    if z.dim() != 2:
        raise ValueError(f"z must have shape (n, d), one point per row, got shape {tuple(z.shape)}")
    n, d = z.shape
    b2 = (henze_zirkler_beta(n, d) if beta is None else _check_beta(beta)) ** 2
    w = _whiten(z)
    dj = (w * w).sum(1)  # (n,)
    djk = (dj.unsqueeze(1) + dj.unsqueeze(0) - 2 * (w @ w.T)).clamp_min(0.0)  # (n, n)
    pairs = torch.exp(-b2 / 2 * djk).sum() / n**2
    single = 2 * (1 + b2) ** (-d / 2) * torch.exp(-b2 / (2 * (1 + b2)) * dj).sum() / n
    return n * (pairs - single + (1 + 2 * b2) ** (-d / 2))


class HenzeZirklerTest(NamedTuple):
    """The statistic (a differentiable 0-dim tensor) and its p-value (0-dim) under multivariate normality."""

    statistic: Tensor
    p_value: Tensor


def henze_zirkler_test(z: Tensor, beta: float | None = None) -> HenzeZirklerTest:
    """:func:`henze_zirkler` and the p-value of the test, from the log-normal approximation.

    Henze and Zirkler (1990) give the mean ``μ`` and variance ``σ²`` of ``HZ`` under normality
    (``a = 1 + 2β²``, ``w_β = (1 + β²)(1 + 3β²)``)::

        μ  = 1 − a^{−d/2} (1 + dβ²/a + d(d+2)β⁴/(2a²))
        σ² = 2(1 + 4β²)^{−d/2} + 2a^{−d}(1 + 2dβ⁴/a² + 3d(d+2)β⁸/(4a⁴))
             − 4 w_β^{−d/2}(1 + 3dβ⁴/(2w_β) + d(d+2)β⁸/(2w_β²))

    and ``HZ`` is approximated by the log-normal with that mean and variance:
    ``p = P(LogNormal(m, s²) > HZ)``, ``m = log(μ² / √(σ² + μ²))``, ``s² = log(1 + σ²/μ²)``.
    The same approximation as pingouin's ``multivariate_normality`` and R's ``MVN``.

    Arguments:
        z: As :func:`henze_zirkler`.
        beta: As :func:`henze_zirkler`.

    Returns:
        :class:`HenzeZirklerTest` ``(statistic, p_value)``.
    """
    stat = henze_zirkler(z, beta)
    n, d = z.shape
    b2 = (henze_zirkler_beta(n, d) if beta is None else float(beta)) ** 2
    a = 1 + 2 * b2
    wb = (1 + b2) * (1 + 3 * b2)
    mu = 1 - a ** (-d / 2) * (1 + d * b2 / a + d * (d + 2) * b2**2 / (2 * a**2))
    var = (
        2 * (1 + 4 * b2) ** (-d / 2)
        + 2 * a ** (-d) * (1 + 2 * d * b2**2 / a**2 + 3 * d * (d + 2) * b2**4 / (4 * a**4))
        - 4 * wb ** (-d / 2) * (1 + 3 * d * b2**2 / (2 * wb) + d * (d + 2) * b2**4 / (2 * wb**2))
    )
    log_scale = math.log(mu**2 / math.sqrt(var + mu**2))
    shape = math.sqrt(math.log1p(var / mu**2))
    p = 0.5 * torch.special.erfc((torch.log(stat.detach()) - log_scale) / (shape * math.sqrt(2)))
    return HenzeZirklerTest(stat, p)
