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
``batch_idx`` (a tensor of data indices, or ``None`` for all ``N``; a list or NumPy
array of integers is converted, negative or too large indices are refused).

Switching from MAPA to a VAE or an IWAE over the same data::

    latent_dim = 1
    model = VAEModel(mlp(latent_dim, D), X, latent_dim, NormalLikelihood(sigma))
    guide = MeanFieldGuide(mlp(D, 2 * latent_dim), X, latent_dim)   # 2·d outputs: loc, pre-softplus scale
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())    # or TraceIWAE_ELBO(num_particles=10)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import as_data_tensor, as_index_tensor, call_network, check_matches_networks, check_positive_int
from .likelihoods import BernoulliLikelihood, Likelihood, NormalLikelihood

__all__ = ["MeanFieldGuide", "VAEModel", "check_decoder_output"]


class VAEModel(nn.Module):
    """The original model (Eq. 1): :math:`z_n \\sim \\mathcal N(0, I)`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(z_n))`.

    Arguments:
        decoder: ``f_θ``, ``(…, d) -> (…, D)``, e.g. ``mlp(latent_dim, D)``.
        data: ``(N, D)`` observations of the decoder's dtype and device (a NumPy array is
            converted to the decoder's dtype; a float64 tensor with a float32 decoder is refused).
        latent_dim: ``d``.
        likelihood: A :class:`~pyro_mapa.models.likelihoods.Likelihood`, e.g.
            ``NormalLikelihood(sigma)``.
    """

    def __init__(self, decoder: nn.Module, data: Tensor, latent_dim: int, likelihood: Likelihood) -> None:
        super().__init__()
        if not isinstance(decoder, nn.Module):
            raise TypeError(f"decoder must be a torch.nn.Module (e.g. mlp(latent_dim, D)), got {type(decoder).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyro_mapa Likelihood (e.g. NormalLikelihood(sigma)), got {type(likelihood).__name__}"
            )
        self.decoder = decoder
        self.register_buffer("data", as_data_tensor(data, "data", networks={"decoder": decoder}))
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.likelihood = likelihood
        self.decoder_passes = 0

    def forward(self, batch_idx: Tensor | Any | None = None) -> Tensor:
        if batch_idx is not None:
            batch_idx = as_index_tensor(batch_idx, len(self.data), "batch_idx", device=self.data.device)
        check_matches_networks(self.data, {"decoder": self.decoder}, "VAEModel.data")
        pyro.module("decoder", self.decoder)
        zeros = self.data.new_zeros(self.latent_dim)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            params = call_network(self.decoder, z, "decoder", f"mlp({self.latent_dim}, D)")
            check_decoder_output(params, self.data, self.likelihood)
            self.decoder_passes += params[..., 0].numel()
            return pyro.sample("x", self.likelihood(params), obs=self.data[idx])


class MeanFieldGuide(nn.Module):
    """Mean-field Gaussian :math:`q_\\phi(z_n \\mid x_n) = \\mathcal N(\\mu_\\phi(x_n), \\mathrm{diag}\\,\\sigma^2_\\phi(x_n))`.

    The encoder outputs ``2·d`` numbers per point: the first ``d`` are the location
    :math:`\\mu`, the last ``d`` the pre-softplus scale,
    :math:`\\sigma = \\mathrm{softplus}(\\cdot) + 10^{-5}`. Build it as
    ``mlp(D, 2 * latent_dim)``.

    Arguments:
        encoder: ``(…, D) -> (…, 2d)``: location and pre-softplus scale.
        data: ``(N, D)`` observations (the same tensor as the model's).
        latent_dim: ``d``.
    """

    def __init__(self, encoder: nn.Module, data: Tensor, latent_dim: int) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"encoder must be a torch.nn.Module (e.g. mlp(D, 2 * latent_dim)), got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.register_buffer("data", as_data_tensor(data, "data", networks={"encoder": encoder}))
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.encoder_passes = 0

    def distribution(self, x: Tensor) -> dist.TorchDistribution:
        """:math:`q(z \\mid x)` for observations ``x`` of shape ``(…, D)``."""
        out = call_network(self.encoder, x, "encoder", f"mlp({x.shape[-1]}, {2 * self.latent_dim})")
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder outputs {out.shape[-1]} numbers per point but MeanFieldGuide needs "
                f"2 * latent_dim = {2 * self.latent_dim} (the location, then the pre-softplus scale); "
                f"build it as mlp(D, 2 * latent_dim)"
            )
        loc, raw_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)

    def forward(self, batch_idx: Tensor | Any | None = None) -> Tensor:
        if batch_idx is not None:
            batch_idx = as_index_tensor(batch_idx, len(self.data), "batch_idx", device=self.data.device)
        check_matches_networks(self.data, {"encoder": self.encoder}, "MeanFieldGuide.data")
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            x = self.data[idx]
            self.encoder_passes += x.shape[0]
            return pyro.sample("z", self.distribution(x))


def check_decoder_output(params: Tensor, data: Tensor, likelihood: Likelihood) -> None:
    """For the built-in likelihoods, the decoder must output one parameter per data column."""
    if isinstance(likelihood, (NormalLikelihood, BernoulliLikelihood)) and params.shape[-1] != data.shape[-1]:
        raise ValueError(
            f"the decoder outputs {params.shape[-1]} numbers per point but the data has {data.shape[-1]} "
            f"columns; {type(likelihood).__name__} needs one per column: build it as mlp(latent_dim, {data.shape[-1]})"
        )
