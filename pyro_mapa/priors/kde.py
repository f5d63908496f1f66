"""Prior recovery by a Gaussian kernel density estimate of the learned codes (Scott's rule)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .distribution import PriorDistribution, check_codes, check_latents

__all__ = ["KDEPrior"]


class KDEPrior:
    """A Gaussian kernel density estimate over ``(N, d)`` codes.

    .. math::
        p(z) = \\frac1N \\sum_{i=1}^N \\mathcal N(z;\\, z_i,\\, H), \\qquad
        H = h^2\\, \\hat\\Sigma,

    with :math:`\\hat\\Sigma` the unbiased sample covariance of the codes and the
    bandwidth factor ``h`` from Scott's rule :math:`h = N^{-1/(d+4)}` by default
    (as ``scipy.stats.gaussian_kde``). Nothing is fitted; each density evaluation
    costs ``O(N d)`` per query point.

    Arguments:
        codes: ``(N, d)`` codes, ``N >= 2``, with a non-singular covariance.
        bandwidth: ``None`` or ``"scott"`` (Scott's rule), ``"silverman"``
            (:math:`h = (N (d + 2) / 4)^{-1/(d+4)}`), or a positive number ``h``.

    Example:
        >>> prior = KDEPrior(torch.randn(200, 3))
        >>> prior.log_prob(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, codes: Tensor, bandwidth: float | str | None = None) -> None:
        codes = check_codes(codes, "codes", 2)
        n, d = codes.shape
        if bandwidth is None or bandwidth == "scott":
            factor = n ** (-1.0 / (d + 4))
        elif bandwidth == "silverman":
            factor = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        elif (
            isinstance(bandwidth, (int, float))
            and not isinstance(bandwidth, bool)
            and math.isfinite(bandwidth)
            and bandwidth > 0
        ):
            factor = float(bandwidth)
        else:
            raise ValueError(
                f"bandwidth must be None, 'scott', 'silverman' or a positive number, got {bandwidth!r}"
            )
        cov = torch.cov(codes.T).reshape(d, d)
        kernel_cov = factor**2 * cov
        chol, info = torch.linalg.cholesky_ex(kernel_cov)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            raise ValueError(
                "codes have a singular covariance (too few codes, or codes on a lower-dimensional subspace)"
            )
        self.codes = codes
        self.factor = factor
        self.kernel_cov = kernel_cov
        self.kernel_chol = chol
        self._white = torch.linalg.solve_triangular(chol, codes.T, upper=False).T  # (N, d)
        log_det = float(chol.diagonal().log().sum())
        self._log_norm = -math.log(n) - log_det - 0.5 * d * math.log(2 * math.pi)

    @property
    def dim(self) -> int:
        """The latent dimension ``d``."""
        return int(self.codes.shape[1])

    def log_prob(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """:math:`\\log p(z)` for ``z`` of shape ``(..., d)``; returns ``(...)`` in the codes' dtype.

        Query points are processed ``chunk_size`` at a time (default: about
        :math:`2^{22} / N`), so memory stays ``O(chunk_size · N)``.
        """
        z = check_latents(z, self.dim)
        n = self.codes.shape[0]
        if chunk_size is None:
            chunk_size = max(1, 2**22 // n)
        flat = z.to(self.codes).reshape(-1, self.dim)
        white = torch.linalg.solve_triangular(self.kernel_chol, flat.T, upper=False).T
        out = []
        for start in range(0, white.shape[0], chunk_size):
            dist2 = torch.cdist(
                white[start : start + chunk_size], self._white, compute_mode="donot_use_mm_for_euclid_dist"
            ).pow(2)
            out.append(torch.logsumexp(-0.5 * dist2, dim=-1))
        lp = torch.cat(out) if out else white.new_zeros(0)
        return (lp + self._log_norm).reshape(z.shape[:-1])

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Draws ``z_i + L ε`` (uniform ``i``, ``L L^T = H``) of shape ``sample_shape + (d,)``."""
        shape = torch.Size(sample_shape)
        idx = torch.randint(self.codes.shape[0], shape, generator=generator, device=self.codes.device)
        eps = torch.randn(
            shape + (self.dim,), generator=generator, dtype=self.codes.dtype, device=self.codes.device
        )
        return self.codes[idx] + eps @ self.kernel_chol.T

    def distribution(self) -> PriorDistribution:
        """This prior as a Pyro distribution with event shape ``(d,)`` (see :class:`PriorDistribution`)."""
        return PriorDistribution(self)

    def __repr__(self) -> str:
        return f"KDEPrior(N={self.codes.shape[0]}, d={self.dim}, factor={self.factor:.4g})"
