"""The prior of the smoothed empiricalized model: an equal-weight Gaussian mixture on the codes.

With smoothed codes (``AmortizedCodebook(..., tau=τ)``) the empiricalized model is

.. math::
    c \\sim \\mathrm{Uniform}\\{1..N\\}, \\qquad z \\mid c \\sim \\mathcal N(z_c, \\mathrm{diag}(σ^2)), \\qquad
    x \\mid z \\sim p_\\theta(x \\mid f_\\theta(z)),

so its prior over ``z`` is :math:`p(z) = \\frac1N \\sum_i \\mathcal N(z; z_i, \\mathrm{diag}(σ^2))` with
:math:`σ = τ s` (``codebook.smoothing_scale()``). Nothing has to be recovered after training:
this *is* the trained model's prior, and the model is evaluated like any VAE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .distribution import PriorDistribution, check_codes, check_latents

__all__ = ["CodeMixturePrior"]


class CodeMixturePrior:
    """:math:`p(z) = \\frac1N \\sum_i \\mathcal N(z; z_i, \\mathrm{diag}(σ^2))`, differentiable in ``z``.

    Arguments:
        codes: ``(N, d)`` codes :math:`z_i`.
        scale: ``σ``, a positive number or a ``(d,)`` tensor of positive values.

    Example:
        >>> prior = CodeMixturePrior(torch.randn(100, 2), 0.1)
        >>> prior.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, codes: Tensor, scale: float | Tensor) -> None:
        codes = check_codes(codes, "codes", 1)
        scale_t = torch.as_tensor(scale, dtype=codes.dtype, device=codes.device).detach()
        if scale_t.dim() > 1 or (scale_t.dim() == 1 and scale_t.shape[0] != codes.shape[1]):
            raise ValueError(f"scale must be a number or a ({codes.shape[1]},) tensor, got shape {tuple(scale_t.shape)}")
        if not bool(torch.isfinite(scale_t).all()) or not bool((scale_t > 0).all()):
            raise ValueError(f"scale must be positive and finite (tau * code spread), got {scale_t.tolist()}")
        self.codes = codes.detach()
        self.scale = scale_t.expand(codes.shape[1]).clone()

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def log_prob(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """:math:`\\log p(z)` for ``z`` of shape ``(..., d)``, in chunks of query points."""
        z = check_latents(z, self.dim)
        n = self.codes.shape[0]
        flat = z.reshape(-1, self.dim)
        chunk = chunk_size or max(1, 2**22 // (n * self.dim))
        log_norm = -math.log(n) - self.scale.log().sum() - 0.5 * self.dim * math.log(2 * math.pi)
        out = []
        for start in range(0, flat.shape[0], chunk):
            u = (flat[start : start + chunk].unsqueeze(1) - self.codes) / self.scale  # (m, N, d)
            out.append(torch.logsumexp(-0.5 * u.pow(2).sum(-1), dim=-1))
        lp = torch.cat(out) if out else flat.new_zeros(0)
        return (lp + log_norm).reshape(z.shape[:-1])

    def rsample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Draws (a code, then Gaussian noise), reparameterized in the noise."""
        shape = torch.Size(sample_shape)
        idx = torch.randint(self.codes.shape[0], shape, generator=generator, device=self.codes.device)
        eps = torch.randn(shape + (self.dim,), generator=generator, dtype=self.codes.dtype, device=self.codes.device)
        return self.codes[idx] + self.scale * eps

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def distribution(self) -> PriorDistribution:
        """This prior as a Pyro distribution (event shape ``(d,)``)."""
        return PriorDistribution(self)

    def __repr__(self) -> str:
        return f"CodeMixturePrior(N={self.codes.shape[0]}, d={self.dim})"
