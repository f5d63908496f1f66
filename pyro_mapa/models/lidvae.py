"""The latent-identifiable (injective) decoder of LIDVAE: :math:`g_2(\\beta\\, g_1(z))`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import check_positive_int
from .icnn import BrenierMap, check_input

__all__ = ["FullRankLinear", "LIDVAEDecoder", "orthonormal_columns"]


def _check_range(singular_range: object) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in singular_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"beta_singular_range must be a pair (low, high), got {singular_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ValueError(
            f"beta_singular_range must satisfy 0 < low < high < inf, got ({low}, {high}); e.g. (1e-5, 10.0)"
        )
    return low, high


def orthonormal_columns(raw: Tensor) -> Tensor:
    """An ``(n, k)`` matrix with orthonormal columns (``n >= k``) from any raw ``(n, k)`` matrix.

    The first ``k`` columns of the product of ``k`` Householder reflections
    :math:`H_i = I - \\tau_i v_i v_i^\\top`, where :math:`v_i` is :math:`e_i` plus the part of column
    :math:`i` of ``raw`` below the diagonal and :math:`\\tau_i = 2 / \\|v_i\\|^2`
    (:func:`torch.linalg.householder_product`, the map behind
    ``torch.nn.utils.parametrizations.orthogonal(orthogonal_map="householder")``). Unlike that
    parametrization, which multiplies column :math:`i` by ``int(raw[i, i])`` to carry a sign (so that
    weight decay or a re-initialisation can zero a column), every real ``raw`` gives orthonormal
    columns here; the signs it cannot reach are immaterial (see :class:`FullRankLinear`).
    """
    below = raw.tril(-1)
    return torch.linalg.householder_product(below, 2.0 / (1.0 + below.pow(2).sum(-2)))


class FullRankLinear(nn.Module):
    """A linear map :math:`\\beta: \\mathbb R^d \\to \\mathbb R^D` (``d <= D``) with singular values in ``[low, high]``.

    Parameterised by its singular value decomposition

    .. math::

        \\beta = U \\,\\mathrm{diag}(s)\\, V^\\top, \\qquad
        s = \\mathrm{low}\\,(\\mathrm{high}/\\mathrm{low})^{\\mathrm{sigmoid}(r)},

    with :math:`U \\in \\mathbb R^{D \\times d}` (orthonormal columns) and :math:`V \\in \\mathbb R^{d \\times d}`
    (orthogonal) given by :func:`orthonormal_columns` of unconstrained parameters ``raw_u``,
    ``raw_v``, and :math:`s` interpolated log-linearly from ``raw_singular_values`` so that the whole
    range (six decades by default) is reachable. Whatever the optimizer does, the singular values of
    :math:`\\beta` are :math:`s \\in [\\mathrm{low}, \\mathrm{high}]` (up to rounding), so :math:`\\beta` has
    full column rank and :math:`\\|\\beta u\\| \\ge \\mathrm{low}\\,\\|u\\|`. The authors instead clip the
    singular values of an unconstrained matrix after each step; this parameterisation needs no
    optimizer hook, and :math:`\\beta` is a function of the parameters alone (no buffers), so
    restoring Pyro's param store restores it.

    :math:`U` is dropped when ``D = 1`` and :math:`V` when ``d = 1`` (no free parameter). The Householder
    map reaches :math:`U, V` only up to column signs; nothing is lost, since :math:`\\beta R` for any
    orthogonal :math:`R` is reached by rotating the latent (:math:`R^\\top g_1(R\\,\\cdot)` is again a
    Brenier map, and both :math:`\\mathcal N(0, I)` and MAPA's free codes are rotation invariant).
    :math:`s` starts at 1 (or the nearest end of the range), ``raw_u`` and ``raw_v`` at ``N(0, 1)``.

    Arguments:
        in_dim: ``d``.
        out_dim: ``D >= d``.
        singular_range: ``(low, high)`` with ``0 < low < high``.
    """

    def __init__(self, in_dim: int, out_dim: int, singular_range: tuple[float, float] = (1e-5, 10.0)) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim")
        self.out_dim = check_positive_int(out_dim, "out_dim")
        if in_dim > out_dim:
            raise ValueError(
                f"in_dim (d = {in_dim}) must be <= out_dim (D = {out_dim}) for a full-rank injective map"
            )
        self.low, self.high = _check_range(singular_range)
        self.raw_u = nn.Parameter(torch.randn(out_dim, in_dim)) if out_dim > 1 else None
        self.raw_v = nn.Parameter(torch.randn(in_dim, in_dim)) if in_dim > 1 else None
        start = -math.log(self.low) / (math.log(self.high) - math.log(self.low))  # sigmoid(r) for s = 1
        start = min(max(start, 0.01), 0.99)
        self.raw_singular_values = nn.Parameter(torch.full((in_dim,), math.log(start / (1 - start))))

    def singular_values(self) -> Tensor:
        """:math:`s \\in [\\mathrm{low}, \\mathrm{high}]^d`, the singular values of :math:`\\beta`."""
        log_ratio = math.log(self.high / self.low)
        s = self.low * torch.exp(log_ratio * torch.sigmoid(self.raw_singular_values))
        return s.clamp(self.low, self.high)  # only rounding can leave the range

    @property
    def weight(self) -> Tensor:
        """The ``(D, d)`` matrix :math:`\\beta = U\\,\\mathrm{diag}(s)\\,V^\\top`."""
        return self(
            torch.eye(
                self.in_dim, dtype=self.raw_singular_values.dtype, device=self.raw_singular_values.device
            )
        ).T

    def u(self) -> Tensor | None:
        """:math:`U`, ``(D, d)`` with orthonormal columns (``None`` when ``D = 1``)."""
        return None if self.raw_u is None else orthonormal_columns(self.raw_u)

    def v(self) -> Tensor | None:
        """:math:`V`, ``(d, d)`` orthogonal (``None`` when ``d = 1``)."""
        return None if self.raw_v is None else orthonormal_columns(self.raw_v)

    def forward(self, z: Tensor) -> Tensor:
        check_input("z", z, self.in_dim)
        v, u = self.v(), self.u()
        y = z if v is None else z @ v
        y = y * self.singular_values()
        return y if u is None else y @ u.T

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, singular_range=({self.low}, {self.high})"


class LIDVAEDecoder(nn.Module):
    """The injective decoder of the latent-identifiable VAE: :math:`f(z) = g_2(\\beta\\, g_1(z))`.

    :math:`g_1: \\mathbb R^d \\to \\mathbb R^d` and :math:`g_2: \\mathbb R^D \\to \\mathbb R^D` are
    :class:`~pyro_mapa.models.icnn.BrenierMap` s (gradients of input-convex networks plus
    :math:`c\\,y`) and :math:`\\beta` a :class:`FullRankLinear` map. Its output is the likelihood's
    parameter (the mean of a :class:`~pyro_mapa.NormalLikelihood`, the logits of a
    :class:`~pyro_mapa.BernoulliLikelihood`). Chaining the three lower bounds,

    .. math::

        \\|f(a) - f(b)\\| \\;\\ge\\; c_2\\, s_{\\min}(\\beta)\\, c_1\\, \\|a - b\\|
        \\;\\ge\\; c_2 \\cdot \\mathrm{low} \\cdot c_1\\, \\|a - b\\|,

    so distinct codes always decode to distinct parameters and the latent is identifiable
    (:meth:`injectivity_constant` returns the middle constant). With ``d = 1`` and :math:`\\beta = s\\,u`,
    the projection :math:`t \\mapsto \\langle f(t), u \\rangle` is strictly increasing (slope at least
    :math:`c_1 c_2 s`), so the decoded curve can never close or cross itself.

    A drop-in decoder: ``VAEModel(LIDVAEDecoder(d, D), data, d, likelihood)`` trains with ``Trace_ELBO``
    or :class:`~pyro_mapa.TraceIWAE_ELBO`, and ``AmortizedCodebook(encoder, LIDVAEDecoder(d, D), data)``
    with MAPA. It maps ``(..., d)`` to ``(..., D)`` and runs under ``torch.no_grad()`` too (the Brenier
    maps enable gradients locally).

    Arguments:
        latent_dim: ``d``.
        data_dim: ``D >= d``.
        hidden: Hidden widths of both ICNNs.
        strength: :math:`c_1 = c_2 = c > 0`.
        activation: ``"softplus"`` (default, smooth) or ``"leaky_relu"``.
        beta_singular_range: ``(low, high)``, the range of :math:`\\beta`'s singular values
            (the authors clip to ``(1e-5, 10)``).

    Example:
        >>> dec = LIDVAEDecoder(1, 2, hidden=(8, 8))
        >>> dec(torch.zeros(5, 3, 1)).shape
        torch.Size([5, 3, 2])

    References:
        | Posterior Collapse and Latent Variable Non-identifiability (Wang, Blei and Cunningham, 2021)
        | https://arxiv.org/abs/2301.00537
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden: Sequence[int] = (50, 50),
        strength: float = 0.1,
        activation: str = "softplus",
        beta_singular_range: tuple[float, float] = (1e-5, 10.0),
    ) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(data_dim, "data_dim")
        if latent_dim > data_dim:
            raise ValueError(
                f"latent_dim (d = {latent_dim}) must be <= data_dim (D = {data_dim}): "
                "an injective decoder cannot map a higher-dimensional latent space into the data space"
            )
        _check_range(beta_singular_range)
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        self.g1 = BrenierMap(latent_dim, hidden, strength, activation)
        self.beta = FullRankLinear(latent_dim, data_dim, beta_singular_range)
        self.g2 = BrenierMap(data_dim, hidden, strength, activation)

    def injectivity_constant(self) -> Tensor:
        """:math:`c_1\\, s_{\\min}(\\beta)\\, c_2`: :math:`\\|f(a) - f(b)\\| \\ge` this :math:`\\cdot \\|a - b\\|`."""
        return self.g1.strength * self.g2.strength * self.beta.singular_values().min()

    def forward(self, z: Tensor) -> Tensor:
        check_input("z", z, self.latent_dim)
        return self.g2(self.beta(self.g1(z)))
