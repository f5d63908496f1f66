"""Importance-sampling proposals: the :class:`Proposal` protocol and an amortized Gaussian mixture."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_nonnegative_int
from ..models.networks import mlp

__all__ = ["MixtureProposal", "Proposal"]


class Proposal(Protocol):
    """What :func:`importance_log_likelihood` needs from a proposal :math:`q(z \\mid x)`.

    ``sample(x, num_samples, generator)`` returns ``(num_samples, n, d)`` draws for the
    ``(n, D)`` points ``x``; ``log_prob(z, x)`` returns ``(num_samples, n)``
    log-densities of such draws. :class:`MixtureProposal` implements it; so can any
    fixed distribution that ignores ``x``.
    """

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor: ...


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MixtureProposal(nn.Module):
    """An amortized mixture of ``K`` diagonal Gaussians, :math:`q(z \\mid x) = \\sum_k \\alpha_k(x)\\,
    \\mathcal N(z;\\, \\mu_k(x), \\mathrm{diag}\\,\\sigma_k(x)^2)`.

    One network maps the standardized observation :math:`(x - m_x) / s_x` to the
    mixture logits, the ``K × d`` means and the ``K × d`` scales
    (:math:`\\sigma = \\mathrm{softplus}(\\cdot) + 10^{-6}`). The output layer starts
    near zero weights, so initially every ``x`` gets the same mixture with means
    ``init_loc`` and scales ``init_scale``.

    Arguments:
        data_dim: ``D``, the observation size.
        latent_dim: ``d``.
        num_components: ``K >= 1``.
        hidden: Hidden widths of the network (``()`` makes it affine in ``x``).
        x_loc, x_scale: ``(D,)`` input standardization (default 0 and 1).
        init_loc: ``(K, d)`` initial component means (default 0).
        init_scale: Initial component scale, a positive number or a ``(d,)`` tensor.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        num_components: int = 5,
        hidden: Sequence[int] = (64, 64),
        *,
        x_loc: Tensor | None = None,
        x_scale: Tensor | None = None,
        init_loc: Tensor | None = None,
        init_scale: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        counts = ((data_dim, "data_dim"), (latent_dim, "latent_dim"), (num_components, "num_components"))
        for value, name in counts:
            if check_nonnegative_int(value, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        k, d = num_components, latent_dim
        self.data_dim, self.latent_dim, self.num_components = data_dim, latent_dim, num_components
        self.net = mlp(data_dim, k * (1 + 2 * d), tuple(hidden))
        self.register_buffer(
            "x_loc", torch.zeros(data_dim) if x_loc is None else x_loc.detach().reshape(data_dim)
        )
        self.register_buffer(
            "x_scale", torch.ones(data_dim) if x_scale is None else x_scale.detach().reshape(data_dim)
        )
        init_loc = torch.zeros(k, d) if init_loc is None else init_loc.detach().reshape(k, d)
        init_scale = torch.as_tensor(init_scale, dtype=torch.get_default_dtype()).detach().expand(d)
        if not bool((torch.isfinite(init_scale) & (init_scale > 0)).all()):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        raw_scale = torch.tensor([_inverse_softplus(float(s)) for s in init_scale])
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(1e-2)
            bias = [torch.zeros(k), init_loc.reshape(-1).to(last.bias), raw_scale.repeat(k)]
            last.bias.copy_(torch.cat(bias))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture log-weights ``(n, K)`` (normalized), means and scales ``(n, K, d)``."""
        k, d = self.num_components, self.latent_dim
        h = self.net((x - self.x_loc) / self.x_scale)
        logits, loc, raw = h.split([k, k * d, k * d], dim=-1)
        shape = x.shape[:-1] + (k, d)
        return torch.log_softmax(logits, -1), loc.reshape(shape), F.softplus(raw.reshape(shape)) + 1e-6

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q(z \\mid x)` for ``z`` ``(..., n, d)`` and ``x`` ``(n, D)``; returns ``(..., n)``."""
        log_alpha, loc, scale = self(x)
        comp = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., n, K)
        return torch.logsumexp(log_alpha + comp, dim=-1)

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num_samples, n, d)`` i.i.d. draws (component, then Gaussian); not differentiable."""
        with torch.no_grad():
            log_alpha, loc, scale = self(x)
            n = x.shape[0]
            probs = log_alpha.exp()
            comp = torch.multinomial(probs, num_samples, replacement=True, generator=generator).T  # (S, n)
            rows = torch.arange(n, device=x.device).expand(num_samples, n)
            eps = torch.randn(
                (num_samples, n, self.latent_dim), generator=generator, dtype=loc.dtype, device=loc.device
            )
            return loc[rows, comp] + scale[rows, comp] * eps

    def rsample_components(
        self, x: Tensor, num_per_component: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Stratified reparameterized draws: ``T`` from every component.

        Returns:
            ``z`` of shape ``(T, K, n, d)`` (``z[t, k]`` drawn from component ``k``) and
            the mixture log-weights ``(K, n)``.
        """
        log_alpha, loc, scale = self(x)  # (n, K), (n, K, d)
        loc, scale = loc.transpose(0, 1), scale.transpose(0, 1)  # (K, n, d)
        eps = torch.randn(
            (num_per_component,) + tuple(loc.shape), generator=generator, dtype=loc.dtype, device=loc.device
        )
        return loc + scale * eps, log_alpha.T
