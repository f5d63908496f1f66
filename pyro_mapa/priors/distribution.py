"""What every recovered prior shares: argument checks and :class:`PriorDistribution`, a Pyro wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

__all__ = ["MIN_FLOW_CODES", "PriorDistribution", "check_codes", "check_latents"]

MIN_FLOW_CODES = 10


def check_codes(codes: Any, name: str, min_count: int) -> Tensor:
    """Validated, detached ``(N, d)`` floating-point codes."""
    if not isinstance(codes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(
            f"{name} must have shape (N, d), got {tuple(codes.shape)}"
            + ("; for 1-D codes pass codes.unsqueeze(-1)" if codes.dim() == 1 else "")
        )
    if codes.shape[1] < 1:
        raise ValueError(f"{name} must have at least one latent dimension, got shape {tuple(codes.shape)}")
    if codes.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} codes, got {codes.shape[0]}")
    codes = codes.detach()
    if not codes.is_floating_point():
        codes = codes.to(torch.get_default_dtype())
    if not bool(torch.isfinite(codes).all()):
        raise ValueError(f"{name} contain NaN or inf")
    return codes


def check_latents(z: Any, dim: int, name: str = "z") -> Tensor:
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., {dim}), got {type(z).__name__}")
    if z.dim() == 0 or z.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}), got {tuple(z.shape)}")
    return z


class PriorDistribution(TorchDistribution):
    """A recovered prior as a Pyro distribution over :math:`\\mathbb R^d` (event shape ``(d,)``).

    Returned by :meth:`FlowPrior.distribution` and :meth:`KDEPrior.distribution`.
    It has no parameters of its own: ``expand`` (which ``pyro.plate`` calls) only
    changes the batch shape, and every batch element is an independent draw from
    the same prior, so

    .. code-block:: python

        with pyro.plate("data", n):
            z = pyro.sample("z", prior.distribution())   # (n, d)

    works as with ``dist.Normal(0, 1).expand([d]).to_event(1)``. Sampling uses
    torch's global RNG (``pyro.set_rng_seed`` seeds it).

    Arguments:
        prior: A :class:`FlowPrior` or :class:`KDEPrior` (anything with ``dim``,
            ``log_prob(z)`` and ``sample(shape)``; ``rsample(shape)`` too if it is
            reparameterizable).
        batch_shape: The batch shape (default ``()``).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(
        self, prior: Any, batch_shape: Sequence[int] = (), validate_args: bool | None = None
    ) -> None:
        self.prior = prior
        super().__init__(torch.Size(batch_shape), torch.Size([prior.dim]), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return hasattr(self.prior, "rsample")

    def expand(self, batch_shape, _instance=None) -> PriorDistribution:
        new = self._get_checked_instance(PriorDistribution, _instance)
        new.prior = self.prior
        super(PriorDistribution, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.prior.sample(torch.Size(sample_shape) + self.batch_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        if not self.has_rsample:
            raise TypeError(
                f"{type(self.prior).__name__} has no reparameterized sampler; use .sample(), or a "
                "FlowPrior where gradients must flow through the draws"
            )
        return self.prior.rsample(torch.Size(sample_shape) + self.batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lp = self.prior.log_prob(value)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def __repr__(self) -> str:
        name = type(self.prior).__name__
        return f"PriorDistribution({name}, batch_shape={tuple(self.batch_shape)}, dim={self.prior.dim})"

