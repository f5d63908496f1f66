"""The five synthetic ground-truth benchmarks of the paper (§6, App. C.1; ``DATASETS.md``).

Every benchmark is ``z ~ N(0, 1)`` (``d = 1``), ``x = f(z) + ε`` in ``R²`` with
``ε ~ N(0, σ² I)``, ``σ = 0.05``. The exact ``log p_true(x)`` is a 1-D integral,
computed by quadrature.

Example:
    >>> ds = load_dataset("figure8", num_train=100, num_valid=10, num_test=10, seed=0)
    >>> ds.train.shape
    torch.Size([100, 2])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..evaluation.exact import quadrature_log_likelihood
from ..models.likelihoods import NormalLikelihood

__all__ = [
    "DATASET_NAMES",
    "SIGMA",
    "SyntheticDataset",
    "fit_surrogate_decoder",
    "load_dataset",
    "true_decoder",
]

SIGMA = 0.05


def _phi(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _figure8(z: Tensor) -> Tensor:
    u = (0.6 + 1.8 * _phi(z)) * math.pi
    den = torch.sin(u) ** 2 + 1.0
    return torch.stack([math.sqrt(2) * torch.cos(u) / den, math.sqrt(2) * torch.cos(u) * torch.sin(u) / den], -1)


def _circle(z: Tensor) -> Tensor:
    u = 2 * math.pi * _phi(z)
    return torch.stack([torch.cos(u), torch.sin(u)], -1)


def _absolute_value(z: Tensor) -> Tensor:
    u = 4 * _phi(z) - 2
    return torch.stack([u, u.abs()], -1)


def _clusters(z: Tensor) -> Tensor:
    s = sum(torch.sigmoid(12 * (z - c)) for c in (-1.2, -0.4, 0.4, 1.2))
    u = 2 * math.pi * s / 5
    return torch.stack([torch.cos(u), torch.sin(u)], -1)


def _spiral_dots(z: Tensor) -> Tensor:
    p = 5 * _phi(z)
    s = torch.floor(p) + torch.sigmoid(20 * (p - torch.floor(p) - 0.5))
    u = 0.6 + 2.4 * s / 5
    r = u / 3
    return torch.stack([r * torch.cos(2 * math.pi * u), r * torch.sin(2 * math.pi * u)], -1)


_DECODERS: dict[str, Callable[[Tensor], Tensor]] = {
    "figure8": _figure8,
    "circle": _circle,
    "absolute_value": _absolute_value,
    "clusters": _clusters,
    "spiral_dots": _spiral_dots,
}
DATASET_NAMES = tuple(_DECODERS)


def true_decoder(name: str) -> Callable[[Tensor], Tensor]:
    """The ground-truth ``f``: maps ``(..., 1)`` latents to ``(..., 2)`` means."""
    if name not in _DECODERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    f = _DECODERS[name]
    return lambda z: f(z[..., 0])


@functools.lru_cache(maxsize=None)
def fit_surrogate_decoder(
    name: str,
    hidden: tuple[int, ...] = (50, 50),
    steps: int = 3000,
    lr: float = 3e-3,
    seed: int = 0,
) -> Callable[[Tensor], Tensor]:
    """A small network fitted to the true ``f`` with full supervision (App. C.1).

    The paper generates its data from such a network, so that the truth is exactly
    representable by the model class. Trained by mean squared error on fresh
    ``z ~ N(0, 1)`` every step (batch 512), Adam with a cosine-decayed learning rate.
    Cached per argument set within a process.

    Returns:
        A frozen function ``(..., 1) -> (..., 2)`` (float32 inside, any float dtype out).
    """
    from ..models.networks import mlp

    f = true_decoder(name)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp(1, 2, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        z = torch.randn(512, 1, generator=g)
        loss = ((net(z) - f(z)) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.requires_grad_(False)

    def decode(z: Tensor) -> Tensor:
        return net(z.float()).to(z.dtype)

    return decode


@dataclass
class SyntheticDataset:
    """Train/validation/test draws of one benchmark with their true latents and exact log-densities."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    train_z: Tensor
    valid_z: Tensor
    test_z: Tensor
    sigma: float
    decoder: Callable[[Tensor], Tensor]

    @property
    def likelihood(self) -> NormalLikelihood:
        return NormalLikelihood(self.sigma)

    def true_log_prob(self, x: Tensor, num_points: int = 4001) -> Tensor:
        """Exact ``log p_true(x)`` per point, by quadrature over ``z ~ N(0, 1)`` (float64)."""
        x64 = x.to(torch.float64)
        return quadrature_log_likelihood(
            x64, self.decoder, self.likelihood, num_points=num_points, low=-7.0, high=7.0
        ).to(x.dtype)


def _draw(f: Callable[[Tensor], Tensor], n: int, sigma: float, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = f(z) + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.float(), z.float()


def load_dataset(
    name: str,
    num_train: int = 1000,
    num_valid: int = 1000,
    num_test: int = 2000,
    seed: int = 0,
    sigma: float = SIGMA,
    truth: str = "formula",
) -> SyntheticDataset:
    """Draws a benchmark; the splits use seeds ``3*seed``, ``3*seed+1``, ``3*seed+2`` (independent draws).

    Arguments:
        name: One of :data:`DATASET_NAMES`.
        num_train, num_valid, num_test: Split sizes (defaults as in the paper).
        seed: The draw; different seeds give independent data sets.
        sigma: Observation noise (0.05 in every benchmark).
        truth: ``"formula"`` (default) uses ``f`` as written in DATASETS.md; ``"network"``
            uses :func:`fit_surrogate_decoder` (the paper's choice), fitted with seed 0
            so every draw shares one truth.
    """
    if truth not in ("formula", "network"):
        raise ValueError(f"truth must be 'formula' or 'network', got {truth!r}")
    f = true_decoder(name) if truth == "formula" else fit_surrogate_decoder(name)
    for arg, v in (("num_train", num_train), ("num_valid", num_valid), ("num_test", num_test)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    train, train_z = _draw(f, num_train, sigma, 3 * seed)
    valid, valid_z = _draw(f, num_valid, sigma, 3 * seed + 1)
    test, test_z = _draw(f, num_test, sigma, 3 * seed + 2)
    return SyntheticDataset(name, train, valid, test, train_z, valid_z, test_z, sigma, f)
