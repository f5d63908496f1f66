"""Amortized codebook: the codes :math:`z_i = g_\\phi(x_i)` decoded once per unique index (Eq. 6)."""

from __future__ import annotations

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

    Arguments:
        encoder: ``g_φ``, maps ``(U, D)`` observations to ``(U, d)`` codes.
        decoder: ``f_θ``, maps ``(U, d)`` codes to ``(U, ...)`` likelihood parameters.
        data: ``(N, D)`` observations the codes are amortized on (a buffer, moved by ``.to``),
            finite, of the networks' dtype and device. A NumPy array is converted to the
            networks' dtype; a float64 tensor with float32 networks is refused (pass
            ``data.float()``, or ``encoder.double()`` and ``decoder.double()``).

    Example:
        >>> enc, dec = nn.Linear(2, 1), nn.Linear(1, 2)
        >>> cb = AmortizedCodebook(enc, dec, torch.randn(10, 2))
        >>> cb(torch.tensor([[1, 2], [2, 1]])).shape
        torch.Size([2, 2, 2])
        >>> cb.encoder_passes, cb.decoder_passes
        (2, 2)
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, data: Tensor) -> None:
        super().__init__()
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module (e.g. mlp(...)), got {type(net).__name__}")
        data = as_data_tensor(data, "data", networks={"encoder": encoder, "decoder": decoder})
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("data", data)
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
            index = as_index_tensor(index, self.num_codes, "index", device=self.data.device, one_dim=False)
        x = self.data if index is None else self.data[index]
        return self.encoder(x)

    def forward(self, index: Tensor | Any) -> Tensor:
        """Decoder outputs for an index tensor of any shape: ``index.shape + output_shape``.

        ``index`` holds code indices in ``[0, N)`` (integer tensor, or a list or NumPy
        array of integers, converted); negative or too large indices raise ``ValueError``.
        """
        index = as_index_tensor(index, self.num_codes, "index", device=self.data.device, one_dim=False)
        check_matches_networks(self.data, {"encoder": self.encoder, "decoder": self.decoder}, "codebook.data")
        flat = index.reshape(-1)
        # torch.unique syncs with the host on CUDA (its output size depends on data);
        # that one sync buys up to K+S times fewer network passes.
        unique, inverse = torch.unique(flat, return_inverse=True)
        x = self.data[unique]
        z = call_network(self.encoder, x, "encoder", f"mlp({x.shape[-1]}, latent_dim)")
        out = call_network(self.decoder, z, "decoder", f"mlp({z.shape[-1]}, D)")
        self.encoder_passes += unique.shape[0]
        self.decoder_passes += unique.shape[0]
        return out[inverse].reshape(index.shape + out.shape[1:])
