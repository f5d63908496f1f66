"""Amortized codebook: the codes :math:`z_i = g_\\phi(x_i)` decoded once per unique index (Eq. 6)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import as_data_tensor, as_index_tensor, call_network, check_matches_networks

__all__ = ["AmortizedCodebook"]


class AmortizedCodebook(nn.Module):
    """Maps code indices to decoder outputs :math:`f_\\theta(g_\\phi(x_i))`, running each network once per unique index.

    In the empiricalized model the index :math:`c_n` picks one of ``N`` codes, each
    amortized by the encoder on a training point. A MAPA step asks for ``B(K+S)``
    indices, many of them shared by neighbouring points; this module runs the encoder
    and decoder only on the unique ones and scatters the result back, which is the
    paper's efficiency argument (§5, §6.2). It counts the rows it pushed through each
    network, the paper's cost metric.

    **Smoothed codes** (``tau > 0``): each code is a distribution over locations instead of a
    point, :math:`z \\mid c \\sim \\mathcal N(g_\\phi(x_c),\\ \\mathrm{diag}(\\tau s)^2)`, with ``s``
    the codes' per-dimension standard deviation (``code_scale``, a buffer tracked as an
    exponential moving average of the unique codes of each call, so ``tau`` is relative and
    the encoder cannot shrink it away by growing the codes). ``forward`` then draws one
    reparameterized ``z`` per index (no decoder deduplication): decoding it gives an
    unbiased estimate of :math:`p(x \\mid c)` inside MAPA's sum, so the bound holds for any
    ``tau``. ``tau = 0`` is today's deterministic codebook, bit for bit.

    Arguments:
        encoder: ``g_φ``, maps ``(U, D)`` observations to ``(U, d)`` codes.
        decoder: ``f_θ``, maps ``(U, d)`` codes to ``(U, ...)`` likelihood parameters.
        data: ``(N, D)`` observations the codes are amortized on (a buffer, moved by ``.to``),
            finite, of the networks' dtype and device. A NumPy array is converted to the
            networks' dtype; a float64 tensor with float32 networks is refused (pass
            ``data.float()``, or ``encoder.double()`` and ``decoder.double()``).
        tau: Relative smoothing of the codes, ``>= 0`` (default 0: point codes).
        scale_momentum: Weight of each call's code spread in ``code_scale`` (in ``(0, 1]``).

    Example:
        >>> enc, dec = nn.Linear(2, 1), nn.Linear(1, 2)
        >>> cb = AmortizedCodebook(enc, dec, torch.randn(10, 2))
        >>> cb(torch.tensor([[1, 2], [2, 1]])).shape
        torch.Size([2, 2, 2])
        >>> cb.encoder_passes, cb.decoder_passes
        (2, 2)
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, data: Tensor, *, tau: float = 0.0, scale_momentum: float = 0.1
    ) -> None:
        super().__init__()
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau must be a finite number >= 0 (0: point codes, e.g. 0.5: smoothed codes), got {tau!r}")
        if isinstance(scale_momentum, bool) or not isinstance(scale_momentum, (int, float)) or not 0 < scale_momentum <= 1:
            raise ValueError(f"scale_momentum must lie in (0, 1], got {scale_momentum!r}")
        self.tau = float(tau)
        self.scale_momentum = float(scale_momentum)
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module (e.g. mlp(...)), got {type(net).__name__}")
        data = as_data_tensor(data, "data", networks={"encoder": encoder, "decoder": decoder})
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("data", data)
        self.register_buffer("code_scale", torch.empty(0, dtype=data.dtype))  # set at the first smoothed call
        self.encoder_passes = 0
        self.decoder_passes = 0

    @property
    def num_codes(self) -> int:
        return self.data.shape[0]

    def reset_counts(self) -> None:
        """Sets the pass counters to zero."""
        self.encoder_passes = 0
        self.decoder_passes = 0

    def codes(self, index: Tensor | None = None) -> Tensor:
        """The codes :math:`z_i = g_\\phi(x_i)` for ``index`` (default: all ``N``), not counted."""
        if index is not None:
            index = as_index_tensor(index, self.num_codes, "index", device=self.data.device, one_dim=False,
                                   per_step=True)
        x = self.data if index is None else self.data[index]
        return self.encoder(x)

    def forward(self, index: Tensor | Any) -> Tensor:
        """Decoder outputs for an index tensor of any shape: ``index.shape + output_shape``.

        ``index`` holds code indices in ``[0, N)`` (integer tensor, or a list or NumPy
        array of integers, converted); negative or too large indices raise ``ValueError``.
        """
        index = as_index_tensor(index, self.num_codes, "index", device=self.data.device, one_dim=False,
                                   per_step=True)
        check_matches_networks(self.data, {"encoder": self.encoder, "decoder": self.decoder}, "codebook.data")
        flat = index.reshape(-1)
        # torch.unique syncs with the host on CUDA (its output size depends on data);
        # that one sync buys up to K+S times fewer network passes.
        unique, inverse = torch.unique(flat, return_inverse=True)
        x = self.data[unique]
        z = call_network(self.encoder, x, "encoder", f"mlp({x.shape[-1]}, latent_dim)")
        self.encoder_passes += unique.shape[0]
        if self.tau > 0:
            self._track_scale(z.detach())
            z = z[inverse]
            if self.code_scale.numel():  # unset only after calls with a single unique code: no spread to use yet
                z = z + self.tau * self.code_scale * torch.randn(z.shape, dtype=z.dtype, device=z.device)
            out = call_network(self.decoder, z, "decoder", f"mlp({z.shape[-1]}, D)")
            self.decoder_passes += flat.shape[0]
            return out.reshape(index.shape + out.shape[1:])
        out = call_network(self.decoder, z, "decoder", f"mlp({z.shape[-1]}, D)")
        self.decoder_passes += unique.shape[0]
        return out[inverse].reshape(index.shape + out.shape[1:])

    def _track_scale(self, z: Tensor) -> None:
        """Updates ``code_scale``, the moving average of the codes' per-dimension standard deviation."""
        spread = z.std(0) if z.shape[0] > 1 else torch.zeros_like(z[0])
        if self.code_scale.numel() == 0:
            if z.shape[0] < 2:
                return  # no spread yet: the first smoothed call with one unique code adds no noise
            self.code_scale = spread
        else:
            self.code_scale = (1 - self.scale_momentum) * self.code_scale + self.scale_momentum * spread

    def smoothing_scale(self) -> Tensor:
        """``tau * code_scale``: the per-dimension standard deviation of each code's location."""
        if self.tau == 0:
            return torch.zeros(0)
        if self.code_scale.numel() == 0:
            raise ValueError("the smoothed codebook has not been trained yet (code_scale is unset)")
        return self.tau * self.code_scale
