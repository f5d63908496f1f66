"""The VAE's model and mean-field guide, and how they compare with MAPA's.

One decoder, three ways to train it; switching is a change of guide and loss:

=========  =========================================  ==========================  =====================================
method     model                                      guide                       loss
=========  =========================================  ==========================  =====================================
VAE        :class:`VAEModel` (prior N(0, I))          :class:`MeanFieldGuide`     ``pyro.infer.Trace_ELBO()``
IWAE       :class:`VAEModel`                          :class:`MeanFieldGuide`     :class:`~pyro_mapa.TraceIWAE_ELBO`
MAPA       :class:`EmpiricalizedModel` (Eq. 6)        :class:`~pyro_mapa.MAPAGuide`  :class:`~pyro_mapa.TraceMAPA_ELBO`
=========  =========================================  ==========================  =====================================

Models and guides are ``nn.Module`` s that register their networks with
``pyro.module`` when called (as in Pyro's VAE tutorial), so ``.to(device)`` and
``state_dict`` work and SVI finds every parameter. Every call takes
``batch_idx`` (a tensor of data indices, or ``None`` for all ``N``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .likelihoods import Likelihood

__all__ = ["MeanFieldGuide", "VAEModel"]


class VAEModel(nn.Module):
    """The original model (Eq. 1): :math:`z_n \\sim \\mathcal N(0, I)`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(z_n))`.

    Arguments:
        decoder: ``f_θ``, ``(…, d) -> (…, D)``.
        data: ``(N, D)`` observations.
        latent_dim: ``d``.
        likelihood: A :class:`~pyro_mapa.models.likelihoods.Likelihood`.
    """

    def __init__(self, decoder: nn.Module, data: Tensor, latent_dim: int, likelihood: Likelihood) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("data", data)
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.decoder_passes = 0

    def forward(self, batch_idx: Tensor | None = None) -> Tensor:
        pyro.module("decoder", self.decoder)
        zeros = self.data.new_zeros(self.latent_dim)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            params = self.decoder(z)
            self.decoder_passes += params[..., 0].numel()
            return pyro.sample("x", self.likelihood(params), obs=self.data[idx])


class MeanFieldGuide(nn.Module):
    """Mean-field Gaussian :math:`q_\\phi(z_n \\mid x_n) = \\mathcal N(\\mu_\\phi(x_n), \\mathrm{diag}\\,\\sigma^2_\\phi(x_n))`.

    Arguments:
        encoder: ``(…, D) -> (…, 2d)``: location and pre-softplus scale.
        data: ``(N, D)`` observations.
        latent_dim: ``d``.
    """

    def __init__(self, encoder: nn.Module, data: Tensor, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("data", data)
        self.latent_dim = latent_dim
        self.encoder_passes = 0

    def distribution(self, x: Tensor) -> dist.TorchDistribution:
        out = self.encoder(x)
        loc, raw_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)

    def forward(self, batch_idx: Tensor | None = None) -> Tensor:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            x = self.data[idx]
            self.encoder_passes += x.shape[0]
            return pyro.sample("z", self.distribution(x))
