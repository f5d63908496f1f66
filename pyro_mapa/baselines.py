"""Model and guide building blocks shared by MAPA, the VAE and the IWAE.

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

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .codebook import AmortizedCodebook
from .distributions import UniformIndex
from .likelihoods import Likelihood

__all__ = ["EmpiricalizedModel", "MeanFieldGuide", "VAEModel", "mlp"]


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (50, 50),
    activation: type[nn.Module] = nn.LeakyReLU,
) -> nn.Sequential:
    """A fully connected network ``in_dim -> hidden... -> out_dim`` with ``activation`` between layers.

    The default (two hidden layers of 50 units, LeakyReLU) is the small network used
    for the synthetic benchmarks.
    """
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class VAEModel(nn.Module):
    """The original model (Eq. 1): :math:`z_n \\sim \\mathcal N(0, I)`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(z_n))`.

    Arguments:
        decoder: ``f_θ``, ``(…, d) -> (…, D)``.
        data: ``(N, D)`` observations.
        latent_dim: ``d``.
        likelihood: A :class:`~pyro_mapa.likelihoods.Likelihood`.
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


class EmpiricalizedModel(nn.Module):
    """MAPA's empiricalized model (Eq. 6): :math:`c_n \\sim \\mathrm{Uniform}\\{1..N\\}`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(g_\\phi(x_{c_n})))`.

    Its index site is ``"c"`` inside plate ``"data"``, matching
    ``MAPAGuide(table, site="c", plate="data")``.

    Arguments:
        codebook: The :class:`~pyro_mapa.AmortizedCodebook` (encoder, decoder, data).
        likelihood: A :class:`~pyro_mapa.likelihoods.Likelihood`.
    """

    def __init__(self, codebook: AmortizedCodebook, likelihood: Likelihood) -> None:
        super().__init__()
        self.codebook = codebook
        self.likelihood = likelihood

    @property
    def data(self) -> Tensor:
        return self.codebook.data

    def forward(self, batch_idx: Tensor | None = None) -> Tensor:
        pyro.module("codebook", self.codebook)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            c = pyro.sample("c", UniformIndex(len(self.data)))  # = Categorical(logits=zeros(N)), O(1) log_prob
            return pyro.sample("x", self.likelihood(self.codebook(c)), obs=self.data[idx])
