"""Free codes: one learned code :math:`z_i` per data point, no encoder (generative latent optimisation)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import check_nonnegative_int

__all__ = ["FreeCodebook", "pca_codes"]


def pca_codes(data: Tensor, latent_dim: int, scale: float = 1.0) -> Tensor:
    """The data's projection on its top ``latent_dim`` principal axes, each axis scaled to std ``scale``.

    .. math:: z_i = \\mathrm{scale} \\cdot \\frac{U_{i, :d} S_{:d}}{\\mathrm{std}(U_{:, :d} S_{:d})}
              \\quad\\text{with}\\quad X - \\bar X = U S V^\\top .

    Nearby points get nearby codes, which is what an encoder would otherwise provide at the
    start of training. Axes beyond the data's rank (``latent_dim > min(N - 1, D)``, or
    zero-variance axes) are left at zero. Computed in float64 from the ``D × D`` covariance
    (cheap for ``D`` up to a few thousand) and returned in ``data``'s dtype and device.

    Arguments:
        data: ``(N, ...)`` observations (flattened per row).
        latent_dim: ``d``, the number of axes kept.
        scale: Standard deviation of each kept axis.
    """
    x = data.detach().reshape(data.shape[0], -1).to(torch.float64)
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x)  # ascending
    k = min(latent_dim, x.shape[1])
    proj = x @ evecs[:, -k:].flip(1)  # (N, k), largest variance first
    std = proj.std(0) if x.shape[0] > 1 else torch.zeros(k, dtype=x.dtype, device=x.device)
    tol = 1e-12 * max(float(evals[-1]), 1.0)  # a one-off sync at construction, not per step
    proj = torch.where(std**2 * max(x.shape[0] - 1, 1) > tol, proj / std.clamp_min(1e-300), torch.zeros_like(proj))
    codes = torch.zeros(x.shape[0], latent_dim, dtype=x.dtype, device=x.device)
    codes[:, :k] = scale * proj
    return codes.to(data.dtype)


class FreeCodebook(nn.Module):
    """Maps code indices to decoder outputs :math:`f_\\theta(z_i)`, with the codes :math:`z_i` free parameters.

    A drop-in for :class:`~pyro_mapa.AmortizedCodebook` in
    :class:`~pyro_mapa.EmpiricalizedModel`: the empiricalized model (Eq. 6) only needs
    *some* code per data point, and here the codes are learned directly, one
    ``nn.Parameter`` row per point, as in generative latent optimisation (GLO). A MAPA
    step then runs only the decoder, once per unique index of the minibatch's ``B(K+S)``
    table entries, and no encoder at all.

    The gradient of the MAPA bound reaches exactly the codes of the indices used in the
    step (the other rows get an exact zero). Note that a momentum optimizer (Adam) keeps
    moving a code for some steps after its last visit, as with any dense embedding. After
    training, :meth:`codes` feeds prior recovery (``GaussianCopulaPrior(codes)``,
    ``FlowPrior.fit(codes)``) and :func:`~pyro_mapa.evaluation.empirical_log_likelihood`.

    Without an encoder, nothing but the table ties nearby codes together: a code is pulled
    towards its own point and the points whose table rows contain it. Starting from the PCA
    projection (``init="pca"``, the default) gives neighbouring points neighbouring codes.

    Arguments:
        num_codes: ``N``; must equal ``len(data)`` (one code per data point).
        latent_dim: ``d``, the code dimension.
        decoder: ``f_θ``, maps ``(U, d)`` codes to ``(U, ...)`` likelihood parameters.
        data: ``(N, D)`` observations (a buffer, moved by ``.to``); the codes take its dtype and device.
        init: ``"pca"`` (:func:`pca_codes`, each axis with std ``init_scale``), ``"normal"``
            (i.i.d. :math:`\\mathcal N(0, \\mathrm{init\\_scale}^2)`), or an ``(N, d)`` tensor.
        init_scale: Scale of the initial codes (default 1.0 for ``"pca"``; use e.g. 0.1 for ``"normal"``).
        generator: Optional :class:`torch.Generator` for ``init="normal"``.

    References:
        | Optimizing the Latent Space of Generative Networks
        | (Bojanowski, Joulin, Lopez-Paz and Szlam, ICML 2018) https://arxiv.org/abs/1707.05776

    Example:
        >>> cb = FreeCodebook(10, 1, nn.Linear(1, 2), torch.randn(10, 2))
        >>> cb(torch.tensor([[1, 2], [2, 1]])).shape
        torch.Size([2, 2, 2])
        >>> cb.encoder_passes, cb.decoder_passes
        (0, 2)
    """

    def __init__(
        self,
        num_codes: int,
        latent_dim: int,
        decoder: nn.Module,
        data: Tensor,
        *,
        init: str | Tensor = "pca",
        init_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        num_codes = check_nonnegative_int(num_codes, "num_codes")
        latent_dim = check_nonnegative_int(latent_dim, "latent_dim")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if not isinstance(decoder, nn.Module):
            raise TypeError(f"decoder must be a torch.nn.Module, got {type(decoder).__name__}")
        if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 1:
            raise ValueError("data must be a tensor of shape (N, ...) with N >= 1")
        if not data.is_floating_point():
            raise TypeError(f"data must be a floating-point tensor, got {data.dtype}; e.g. data.float()")
        if num_codes != data.shape[0]:
            raise ValueError(
                f"num_codes={num_codes} must equal the number of data points len(data)={data.shape[0]} "
                "(one free code per data point)"
            )
        if not isinstance(init_scale, (int, float)) or not init_scale > 0 or init_scale == float("inf"):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale!r}")
        codes = self._initial_codes(init, num_codes, latent_dim, data, float(init_scale), generator)
        self.decoder = decoder
        self.register_buffer("data", data)
        self.z = nn.Parameter(codes)
        self.encoder_passes = 0
        self.decoder_passes = 0

    @staticmethod
    def _initial_codes(init, n: int, d: int, data: Tensor, scale: float, generator) -> Tensor:
        if isinstance(init, Tensor):
            if init.shape != (n, d):
                raise ValueError(f"init must have shape (num_codes, latent_dim) = ({n}, {d}), got {tuple(init.shape)}")
            if not init.is_floating_point() or not bool(torch.isfinite(init).all()):
                raise ValueError("init must be a finite floating-point tensor of codes")
            return init.detach().clone().to(device=data.device, dtype=data.dtype)
        if init == "pca":
            return pca_codes(data, d, scale)
        if init == "normal":
            z = torch.randn(n, d, generator=generator, dtype=data.dtype)
            return (scale * z).to(data.device)
        raise ValueError(f"init must be 'pca', 'normal' or an (N, d) tensor of codes, got {init!r}")

    @property
    def num_codes(self) -> int:
        return self.z.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.z.shape[1]

    def reset_counts(self) -> None:
        """Sets the pass counters to zero."""
        self.encoder_passes = 0
        self.decoder_passes = 0

    def codes(self, index: Tensor | None = None) -> Tensor:
        """The codes :math:`z_i` for ``index`` (default: all ``N``), a differentiable copy, not counted.

        Under ``torch.no_grad()`` the result does not require grad (it is a copy, not the parameter).
        """
        if index is None:
            return self.z.clone()
        if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError("index must be an integer tensor of code indices (or None for all codes)")
        try:
            return self.z.index_select(0, index.reshape(-1).long().to(self.z.device)).reshape(index.shape + (-1,))
        except IndexError as e:
            raise ValueError(f"index must hold code indices in [0, {self.num_codes}); {e}") from e

    def forward(self, index: Tensor) -> Tensor:
        """Decoder outputs for an index tensor of any shape: ``index.shape + output_shape``.

        ``index`` holds code indices in ``[0, N)``. Out-of-range and negative indices are
        refused by ``index_select`` (a ``ValueError`` on the CPU, a device-side assert on an
        accelerator) rather than checked on the host, so the only host sync here is
        ``torch.unique``'s.
        """
        if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(
                f"index must be an integer tensor of code indices, got {getattr(index, 'dtype', type(index).__name__)}"
                "; pass torch.as_tensor(index, dtype=torch.long)"
            )
        flat = index.reshape(-1).to(self.z.device)
        # torch.unique syncs with the host on CUDA (its output size depends on data);
        # that one sync buys up to K+S times fewer decoder passes.
        unique, inverse = torch.unique(flat, return_inverse=True)
        try:
            z = self.z.index_select(0, unique.long())  # no silent wrap-around of negative indices
        except IndexError as e:
            raise ValueError(f"index must hold code indices in [0, {self.num_codes}); {e}") from e
        out = self.decoder(z)
        self.decoder_passes += unique.shape[0]
        return out.index_select(0, inverse.reshape(-1)).reshape(index.shape + out.shape[1:])

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, latent_dim={self.latent_dim}"
