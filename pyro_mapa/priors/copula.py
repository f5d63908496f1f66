"""Prior recovery in one dimension: the Gaussian copula of the learned codes (§5, App. C.3).

.. math::
    u_i = \\Phi^{-1}(\\mathrm{rank}(z_i) / (N + 1)),\\ \\text{standardized};\\qquad
    z = T(u),\\ u \\sim \\mathcal N(0, 1),

with ``T`` the monotone piecewise-linear interpolant of the sorted pairs ``(u, z)``,
extended linearly past the ends. The original model is then
``u ~ N(0, 1)``, ``x ~ p(x | f(T(u)))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GaussianCopulaPrior"]


class GaussianCopulaPrior:
    """1-D Gaussian copula over codes: a monotone map ``T`` from ``N(0, 1)`` to the code distribution.

    Arguments:
        codes: ``(N,)`` or ``(N, 1)`` learned codes (float32 or float64 keep their dtype; half
            precision and integer codes are converted to float32, whose knots then stay distinct).

    Example:
        >>> prior = GaussianCopulaPrior(torch.randn(1000).exp())
        >>> z = prior.sample(torch.Size([5]))
        >>> bool((z > 0).all())
        True
    """

    def __init__(self, codes: Tensor) -> None:
        if not isinstance(codes, Tensor):
            raise TypeError(f"codes must be a torch.Tensor of shape (N,) or (N, 1), got {type(codes).__name__}")
        z = codes.detach().reshape(-1)
        if z.dtype not in (torch.float32, torch.float64):
            z = z.to(torch.float32)  # ndtri has no half-precision kernel; float16 knots would collide
        if codes.dim() > 1 and codes.shape[-1] != 1:
            raise ValueError(f"GaussianCopulaPrior is for 1-D codes, got shape {tuple(codes.shape)}")
        if z.numel() < 2:
            raise ValueError("need at least two codes to fit a copula")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("codes contain NaN or inf")
        n = z.numel()
        z_sorted = torch.sort(z).values
        ranks = torch.arange(1, n + 1, dtype=z.dtype, device=z.device)
        u = torch.special.ndtri(ranks / (n + 1))
        u = (u - u.mean()) / u.std()
        self.u_knots = u
        self.z_knots = z_sorted

    def transform(self, u: Tensor) -> Tensor:
        """``T(u)``, applied elementwise; keeps a trailing singleton latent dim if given."""
        uk, zk = self.u_knots.to(u), self.z_knots.to(u)
        flat = u.reshape(-1)
        pos = torch.searchsorted(uk, flat).clamp(1, uk.numel() - 1)
        u0, u1 = uk[pos - 1], uk[pos]
        z0, z1 = zk[pos - 1], zk[pos]
        t = (flat - u0) / (u1 - u0)
        return torch.lerp(z0, z1, t).reshape(u.shape)  # exact at both knots

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Draws codes ``T(u)``, ``u ~ N(0, 1)``, of shape ``sample_shape + (1,)``."""
        u = torch.randn(
            tuple(sample_shape) + (1,), generator=generator, dtype=self.u_knots.dtype, device=self.u_knots.device
        )
        return self.transform(u)

