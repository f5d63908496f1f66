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

    Everything is computed in float64 on codes centred at their mean and divided by
    each dimension's largest absolute deviation, so codes of any scale (``1e-30`` to
    ``1e20``, in float32 too) neither over- nor underflow. Codes on a lower-dimensional
    subspace are refused: the standardized covariance's smallest eigenvalue must exceed
    ``max((30 eps)², 1000 d eps₆₄)`` times its largest (``eps`` of the codes' dtype), i.e.
    more than the codes' own rounding could produce.

    Arguments:
        codes: ``(N, d)`` codes, ``N >= 2``, with a non-singular covariance (any floating
            dtype; ``log_prob`` and ``sample`` return it).
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
        self.codes = codes
        self.factor = factor
        x = codes.to(torch.float64)
        self._loc = x.mean(0)
        centred = x - self._loc
        self._scale = centred.abs().amax(0)  # (d,) per-dimension spread: standardized codes lie in [-1, 1]
        flat = (self._scale == 0).nonzero().flatten()
        if flat.numel():
            raise ValueError(
                f"codes have a singular covariance: dimension {int(flat[0])} is constant (zero spread); "
                "drop that latent dimension (or use fewer latent dimensions)"
            )
        y = centred / self._scale
        cov = (y.T @ y) / (n - 1)
        eig = torch.linalg.eigvalsh(cov)
        rtol = max((30 * torch.finfo(codes.dtype).eps) ** 2, 1000 * d * torch.finfo(torch.float64).eps)
        if not float(eig[0]) > rtol * float(eig[-1]):
            rank = int((eig > rtol * eig[-1]).sum())
            raise ValueError(
                f"codes have a singular covariance: they lie on a {rank}-dimensional subspace of the "
                f"{d}-dimensional latent space (smallest/largest eigenvalue of the standardized covariance "
                f"{float(eig[0] / eig[-1]):.3g}, at most {rtol:.3g} allowed for {codes.dtype} codes); "
                "drop or combine latent dimensions, or use fewer of them"
            )
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:  # pragma: no cover - excluded by the eigenvalue check above
            raise ValueError("codes have a singular covariance (the Cholesky factorization failed)")
        self._chol = chol  # of the standardized covariance (float64); the kernel's is factor times it
        #: ``L`` with ``L Lᵀ = H`` (float64), in the codes' units.
        self.kernel_chol = self._scale.unsqueeze(1) * chol * factor
        #: The kernel covariance ``H = h² Σ̂`` (float64), in the codes' units.
        self.kernel_cov = factor * factor * cov * self._scale.unsqueeze(1) * self._scale.unsqueeze(0)
        self._white = torch.linalg.solve_triangular(chol, y.T, upper=False).T / factor  # (N, d)
        log_det = float(chol.diagonal().log().sum() + self._scale.log().sum()) + d * math.log(factor)
        self._log_norm = -math.log(n) - log_det - 0.5 * d * math.log(2 * math.pi)

    @property
    def dim(self) -> int:
        """The latent dimension ``d``."""
        return int(self.codes.shape[1])

    def log_prob(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """:math:`\\log p(z)` for ``z`` of shape ``(..., d)``; returns ``(...)`` in the codes' dtype.

        Differentiable in ``z`` (a proposal is fitted through it). Query points are processed ``chunk_size`` at a time (default: about
        :math:`2^{22} / N`), so memory stays ``O(chunk_size · N)``.
        """
        z = check_latents(z, self.dim)
        n = self.codes.shape[0]
        if chunk_size is None:
            chunk_size = max(1, 2**22 // n)
        flat = (z.to(device=self.codes.device, dtype=torch.float64).reshape(-1, self.dim) - self._loc) / self._scale
        white = torch.linalg.solve_triangular(self._chol, flat.T, upper=False).T / self.factor
        out = []
        for start in range(0, white.shape[0], chunk_size):
            dist2 = torch.cdist(
                white[start : start + chunk_size], self._white, compute_mode="donot_use_mm_for_euclid_dist"
            ).pow(2)
            out.append(torch.logsumexp(-0.5 * dist2, dim=-1))
        lp = torch.cat(out) if out else white.new_zeros(0)
        return (lp + self._log_norm).reshape(z.shape[:-1]).to(self.codes.dtype)

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Draws ``z_i + L ε`` (uniform ``i``, ``L L^T = H``) of shape ``sample_shape + (d,)``."""
        shape = torch.Size(sample_shape)
        idx = torch.randint(self.codes.shape[0], shape, generator=generator, device=self.codes.device)
        eps = torch.randn(
            shape + (self.dim,), generator=generator, dtype=self.codes.dtype, device=self.codes.device
        )
        return (self.codes[idx].to(torch.float64) + eps.to(torch.float64) @ self.kernel_chol.T).to(self.codes.dtype)

    def distribution(self) -> PriorDistribution:
        """This prior as a Pyro distribution with event shape ``(d,)`` (see :class:`PriorDistribution`)."""
        return PriorDistribution(self)

    def __repr__(self) -> str:
        return f"KDEPrior(N={self.codes.shape[0]}, d={self.dim}, factor={self.factor:.4g})"
