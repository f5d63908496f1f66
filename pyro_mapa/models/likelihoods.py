"""Observation likelihoods :math:`p_\\theta(x \\mid f_\\theta(z))` and their matching MAPA kernels."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import pyro.distributions as dist
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
        sigma: Observation noise standard deviation, > 0.
    """

    def __init__(self, sigma: float) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    def __call__(self, params: Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.sigma).to_event(1)

    def kernel(self) -> GaussianKernel:
        return GaussianKernel(bandwidth=self.sigma)

    def __repr__(self) -> str:
        return f"NormalLikelihood(sigma={self.sigma})"


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
