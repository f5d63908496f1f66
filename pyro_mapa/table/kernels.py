"""Proximity kernels between observations, on log scale (METHOD.md §4).

A kernel :math:`\\kappa(x, x')` defines the MAPA posterior approximation

.. math:: q(c_n = i) = \\kappa(x_n, x_i) / \\sum_j \\kappa(x_n, x_j).

Only ratios within a row matter, so a kernel is defined up to a factor that
depends on :math:`x_n` alone. Every kernel here is a decreasing function of a
squared Euclidean distance, which lets the table builder compute a whole block of
rows with one matrix multiply (``||a||² + ||b||² - 2 a·b``).

References:
    | Towards Model-Agnostic Posterior Approximation for Fast and Accurate
    | Variational Autoencoders (Yacoby, Pan and Doshi-Velez, AABI 2024)
    | https://arxiv.org/abs/2403.08941
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ..errors import as_data_tensor

__all__ = ["BernoulliKernel", "GaussianKernel", "ProximityKernel", "squared_distances"]


def squared_distances(
    x: Tensor, y: Tensor, x_sq: Tensor | None = None, y_sq: Tensor | None = None
) -> Tensor:
    """Pairwise squared Euclidean distances ``||x_a - y_b||²`` by one matrix multiply.

    Arguments:
        x: A ``(A, D)`` tensor.
        y: A ``(B, D)`` tensor.
        x_sq: Optional precomputed ``(x * x).sum(-1)``.
        y_sq: Optional precomputed ``(y * y).sum(-1)``.

    Returns:
        An ``(A, B)`` tensor, clamped at zero (rounding can make the expansion
        slightly negative).
    """
    if x_sq is None:
        x_sq = (x * x).sum(-1)
    if y_sq is None:
        y_sq = (y * y).sum(-1)
    d2 = torch.addmm(y_sq.unsqueeze(0), x, y.T, beta=1.0, alpha=-2.0)
    d2.add_(x_sq.unsqueeze(1))
    return d2.clamp_(min=0.0)


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

    def validate(self, data: Tensor) -> None:
        """Raises :class:`ValueError`/:class:`TypeError` if ``data`` cannot be used with this kernel."""
        _check_data(data)

    def config(self) -> dict[str, Any]:
        """A JSON-serializable description, stored with tables and used in cache keys."""
        return {"kernel": type(self).__name__}

    def log_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """``(A, B)`` matrix of :math:`\\log \\kappa(x_a, y_b)`."""
        return self.log_kernel_from_sqdist(squared_distances(x, y))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kernel")
        return f"{type(self).__name__}({args})"


def _positive_float(value: Any, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
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

    def log_kernel_from_sqdist(self, sqdist: Tensor) -> Tensor:
        return sqdist * (-0.5 / self.bandwidth**2)

    def log_kernel_from_sqdist_(self, sqdist: Tensor) -> Tensor:
        return sqdist.mul_(-0.5 / self.bandwidth**2)

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

    def validate(self, data: Tensor) -> None:
        _check_data(data)
        if not bool(((data == 0) | (data == 1)).all()):
            raise ValueError(
                "BernoulliKernel needs binary data (every entry 0 or 1); "
                "binarize it first (e.g. (data > 0.5).float()) or use GaussianKernel"
            )

    def config(self) -> dict[str, Any]:
        return {"kernel": "BernoulliKernel", "rho": self.rho}
