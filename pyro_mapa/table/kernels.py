"""Proximity kernels between observations, on log scale (docs/method.md §4).

A kernel :math:`\\kappa(x, x')` defines the MAPA posterior approximation

.. math:: q(c_n = i) = \\kappa(x_n, x_i) / \\sum_j \\kappa(x_n, x_j).

Only ratios within a row matter, so a kernel is defined up to a factor that
depends on :math:`x_n` alone. Every kernel here is a decreasing function of a
squared Euclidean distance measured in units of the kernel's ``length_scale``
(:math:`s = \\|x - x'\\|^2 / \\ell^2`), which lets the table builder compute a whole
block of rows with one matrix multiply on centred, scaled data whatever the data's
offset and scale (:mod:`~pyro_mapa.table.distances`).

References:
    | Towards Model-Agnostic Posterior Approximation for Fast and Accurate
    | Variational Autoencoders (Yacoby, Pan and Doshi-Velez, AABI 2024)
    | https://arxiv.org/abs/2403.08941
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import as_data_tensor

__all__ = ["BernoulliKernel", "GaussianKernel", "ProximityKernel", "squared_distances"]


def squared_distances(
    x: Tensor, y: Tensor, x_sq: Tensor | None = None, y_sq: Tensor | None = None
) -> Tensor:
    """Pairwise squared Euclidean distances ``||x_a - y_b||²``, as ``Σ (x_a - y_b)²`` in float64.

    Computed directly (in blocks) rather than by the expansion ``||a||² + ||b||² - 2 a·b``,
    whose rounding error is absolute and wipes out the distances of data far from the origin;
    equal rows get exactly zero. The table builders use the faster, error-bounded
    :class:`~pyro_mapa.table.distances.DistancePlan` instead.

    Arguments:
        x: An ``(A, D)`` tensor.
        y: A ``(B, D)`` tensor.
        x_sq, y_sq: Ignored (kept for compatibility: the squared norms are not needed).

    Returns:
        An ``(A, B)`` tensor in the inputs' (promoted) dtype.
    """
    return _direct_sqdist(x, y, 1.0).to(torch.promote_types(x.dtype, y.dtype))


def _direct_sqdist(x: Tensor, y: Tensor, scale: float) -> Tensor:
    """``Σ ((x_a - y_b) / scale)²`` in float64, in blocks of at most 2^22 differences."""
    x64, y64 = x.detach().to(torch.float64), y.detach().to(torch.float64)
    step = max(1, 2**22 // max(1, y64.shape[0] * max(x64.shape[1], 1)))
    blocks = [((x64[i : i + step].unsqueeze(1) - y64.unsqueeze(0)) / scale).pow(2).sum(-1)
              for i in range(0, x64.shape[0], step)]
    return torch.cat(blocks) if blocks else x64.new_zeros(0, y64.shape[0])


def _over_square(sqdist: Tensor, scale: float) -> Tensor:
    """``sqdist / scale²`` without ``scale²`` under- or overflowing (a zero distance stays zero)."""
    inv = 1.0 / scale
    info = torch.finfo(sqdist.dtype)
    if info.tiny <= inv <= info.max:
        return sqdist * inv * inv  # each factor representable: only the true result can overflow
    s = sqdist.to(torch.float64) * inv * inv
    return torch.where(sqdist > 0, s, torch.zeros_like(s)).to(sqdist.dtype)


def _check_data(data: Tensor, name: str = "data") -> None:
    if not isinstance(data, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, D), got {type(data).__name__}; "
            f"pass torch.as_tensor({name}, dtype=torch.float32)"
        )
    if data.dim() != 2:
        raise ValueError(
            f"{name} must have shape (N, D), got shape {tuple(data.shape)}; "
            "reshape it to one row per observation (e.g. data.reshape(len(data), -1))"
        )
    # meta device, no rows or columns, integer dtype, NaN or inf: the shared checks
    as_data_tensor(data, name)


class ProximityKernel(ABC):
    """Base class of MAPA kernels: a log-proximity that decreases with a squared distance.

    Subclasses implement :meth:`log_kernel_from_sqdist` and may override
    :meth:`validate` (e.g. to insist on binary data) and :meth:`config`.

    Example:
        >>> k = GaussianKernel(bandwidth=0.5)
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
        >>> k.log_kernel(x, x)
        tensor([[ 0., -2.],
                [-2.,  0.]])
    """

    @abstractmethod
    def log_kernel_from_sqdist(self, sqdist: Tensor) -> Tensor:
        """Maps squared distances to :math:`\\log \\kappa` (up to a per-row constant)."""

    #: True when squared distances between valid data points are integers (exact ties
    #: are then broken by column index in the table builder).
    integer_sqdist: bool = False

    def log_kernel_from_sqdist_(self, sqdist: Tensor) -> Tensor:
        """In-place version of :meth:`log_kernel_from_sqdist` (overwrites and returns ``sqdist``)."""
        return sqdist.copy_(self.log_kernel_from_sqdist(sqdist))

    @property
    def length_scale(self) -> float:
        """The unit :math:`\\ell` of distances: the table builder passes ``||x - x'||² / ℓ²`` (default 1)."""
        return 1.0

    def log_kernel_from_scaled_sqdist(self, scaled: Tensor) -> Tensor:
        """:math:`\\log\\kappa` from squared distances in units of :attr:`length_scale` (``s = d² / ℓ²``).

        The default calls :meth:`log_kernel_from_sqdist` on ``s · ℓ²``; kernels with a
        length scale override it so that no ``ℓ²`` is ever formed (it can under- or overflow).
        """
        ell = self.length_scale
        return self.log_kernel_from_sqdist(scaled if ell == 1.0 else scaled * ell * ell)

    def log_kernel_from_scaled_sqdist_(self, scaled: Tensor) -> Tensor:
        """In-place version of :meth:`log_kernel_from_scaled_sqdist` (overwrites and returns ``scaled``)."""
        return scaled.copy_(self.log_kernel_from_scaled_sqdist(scaled))

    def scaled_sqdist_slope(self) -> float:
        """How fast :math:`-\\log\\kappa` grows per unit of scaled squared distance (nats).

        The table builder multiplies its distance step's rounding error by this to bound the
        error of :math:`\\log\\kappa`. The default estimates it as the steepest secant of
        ``log κ`` between ``s = 0, 10^-8, 10^-7, ..., 10^8`` (``inf`` when that is not finite,
        which makes the builder use its exact float64 path); kernels of the form ``-c·s``
        should return ``c``.
        """
        s = torch.tensor([0.0] + [10.0**k for k in range(-8, 9)], dtype=torch.float64)
        v = self.log_kernel_from_scaled_sqdist(s.clone())
        slope = float(((v[1:] - v[:-1]) / (s[1:] - s[:-1])).abs().max())
        return slope if math.isfinite(slope) else math.inf

    def validate(self, data: Tensor) -> None:
        """Raises :class:`ValueError`/:class:`TypeError` if ``data`` cannot be used with this kernel."""
        _check_data(data)

    def config(self) -> dict[str, Any]:
        """A JSON-serializable description, stored with tables and used in cache keys."""
        return {"kernel": type(self).__name__}

    def log_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """``(A, B)`` matrix of :math:`\\log \\kappa(x_a, y_b)` (distances in float64, returned in ``x``'s dtype)."""
        scaled = _direct_sqdist(x, y, self.length_scale)
        return self.log_kernel_from_scaled_sqdist(scaled).to(torch.promote_types(x.dtype, y.dtype))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kernel")
        return f"{type(self).__name__}({args})"


def _positive_float(value: Any, name: str, hint: str) -> float:
    one_tensor = isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex
    one_array = isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf"
    if (one_tensor and value.dtype != torch.bool) or one_array:
        value = value.item()  # a one-element tensor or array, as a user computing sigma would pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float (or a one-element tensor), got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}; {hint}")
    return value


class GaussianKernel(ProximityKernel):
    """RBF kernel, the MAPA kernel for a Gaussian likelihood with noise σ.

    .. math:: \\log \\kappa(x, x') = -\\|x - x'\\|^2 / (2 h^2)

    Arguments:
        bandwidth: :math:`h > 0`. ``h = σ`` plugs the neighbour's observation in as
            the decoder mean (the paper's rule of thumb, App. B.2); ``h = √2 σ``
            integrates the neighbour's noise out.
    """

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = _positive_float(
            bandwidth, "bandwidth", "use the observation noise σ of the likelihood (or √2 σ)"
        )

    @property
    def length_scale(self) -> float:
        return self.bandwidth

    def log_kernel_from_sqdist(self, sqdist: Tensor) -> Tensor:
        return _over_square(sqdist, self.bandwidth) * -0.5

    def log_kernel_from_sqdist_(self, sqdist: Tensor) -> Tensor:
        return sqdist.copy_(_over_square(sqdist, self.bandwidth)).mul_(-0.5)

    def log_kernel_from_scaled_sqdist(self, scaled: Tensor) -> Tensor:
        return scaled * -0.5

    def log_kernel_from_scaled_sqdist_(self, scaled: Tensor) -> Tensor:
        return scaled.mul_(-0.5)

    def scaled_sqdist_slope(self) -> float:
        return 0.5

    def config(self) -> dict[str, Any]:
        return {"kernel": "GaussianKernel", "bandwidth": self.bandwidth}


class BernoulliKernel(ProximityKernel):
    """Softened Bernoulli kernel for binary data.

    .. math::
        \\kappa(x, x') = \\prod_d \\rho^{[x_d = x'_d]} (1-\\rho)^{[x_d \\ne x'_d]}
        \\propto \\exp(-\\mathrm{Hamming}(x, x') \\log(\\rho / (1 - \\rho)))

    For 0/1 vectors the Hamming distance equals the squared Euclidean distance,
    which is exact in float32 for fewer than 2**24 dimensions.

    Arguments:
        rho: Probability that a coordinate of the neighbour matches, in (0.5, 1).
    """

    def __init__(self, rho: float) -> None:
        rho = _positive_float(rho, "rho", "rho must lie in (0.5, 1), e.g. 0.9")
        if not 0.5 < rho < 1.0:
            raise ValueError(f"rho must lie strictly between 0.5 and 1, got {rho}; e.g. rho=0.9")
        self.rho = rho

    integer_sqdist = True

    def log_kernel_from_sqdist(self, sqdist: Tensor) -> Tensor:
        return sqdist * (-math.log(self.rho / (1.0 - self.rho)))

    def log_kernel_from_sqdist_(self, sqdist: Tensor) -> Tensor:
        return sqdist.mul_(-math.log(self.rho / (1.0 - self.rho)))

    def log_kernel_from_scaled_sqdist(self, scaled: Tensor) -> Tensor:
        return self.log_kernel_from_sqdist(scaled)  # length scale 1

    def log_kernel_from_scaled_sqdist_(self, scaled: Tensor) -> Tensor:
        return self.log_kernel_from_sqdist_(scaled)

    def scaled_sqdist_slope(self) -> float:
        return math.log(self.rho / (1.0 - self.rho))

    def validate(self, data: Tensor) -> None:
        _check_data(data)
        if not bool(((data == 0) | (data == 1)).all()):
            raise ValueError(
                "BernoulliKernel needs binary data (every entry 0 or 1); "
                "binarize it first (e.g. (data > 0.5).float()) or use GaussianKernel"
            )

    def config(self) -> dict[str, Any]:
        return {"kernel": "BernoulliKernel", "rho": self.rho}
