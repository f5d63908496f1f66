"""Observation likelihoods :math:`p_\\theta(x \\mid f_\\theta(z))` and their matching MAPA kernels."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import pyro.distributions as dist
import torch
from torch import Tensor

from ..table.kernels import BernoulliKernel, GaussianKernel, ProximityKernel

__all__ = ["BernoulliLikelihood", "Likelihood", "NormalLikelihood"]


class Likelihood(ABC):
    """Maps decoder outputs to a distribution over one observation (event dim 1)."""

    @abstractmethod
    def __call__(self, params: Tensor) -> dist.TorchDistribution:
        """The observation distribution for decoder outputs ``params`` (``(..., D)``)."""

    @abstractmethod
    def kernel(self) -> ProximityKernel:
        """The MAPA kernel the paper's rule of thumb derives from this likelihood (App. B.2)."""


class NormalLikelihood(Likelihood):
    """:math:`x \\sim \\mathcal N(f(z), \\sigma^2 I)` with fixed, known σ.

    Arguments:
        sigma: Observation noise standard deviation, > 0: a number, a one-element tensor or
            array, or a per-column tensor whose entries are all equal (e.g.
            ``torch.tensor([0.05, 0.05])``), stored as a float. Per-column noise of different
            values is refused: the MAPA kernel and the evaluations use one σ.
    """

    def __init__(self, sigma: float | Tensor) -> None:
        sigma = _one_number(sigma, "sigma")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    def __call__(self, params: Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.sigma).to_event(1)

    def kernel(self) -> GaussianKernel:
        return GaussianKernel(bandwidth=self.sigma)

    def __repr__(self) -> str:
        return f"NormalLikelihood(sigma={self.sigma})"


def _one_number(value, name: str) -> float:
    """A float from a number, or from a tensor/array whose entries are all equal."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a positive number (e.g. 0.05), got {type(value).__name__}") from e
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; pass a positive number, e.g. 0.05")
    if t.numel() > 1 and not bool((t == t[0]).all()):
        raise ValueError(
            f"{name} must be one number, the same noise for every column; got {t.numel()} values, not all equal, "
            f"[{', '.join(f'{v:.6g}' for v in t.tolist()[:5])}]; pass a float (e.g. {name}={float(t.max()):g}), or rescale the data's columns "
            "to a common noise level"
        )
    return float(t[0])


class BernoulliLikelihood(Likelihood):
    """:math:`x_d \\sim \\mathrm{Bernoulli}(\\mathrm{sigmoid}(f(z)_d))`; decoder outputs are logits.

    Arguments:
        rho: ρ of the matching :class:`~pyro_mapa.BernoulliKernel`.
    """

    def __init__(self, rho: float = 0.9) -> None:
        self.rho = rho

    def __call__(self, params: Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params).to_event(1)

    def kernel(self) -> BernoulliKernel:
        return BernoulliKernel(rho=self.rho)

    def __repr__(self) -> str:
        return f"BernoulliLikelihood(rho={self.rho})"
