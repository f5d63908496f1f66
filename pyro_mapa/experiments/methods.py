"""The compared methods as (model, guide, loss) triples over one decoder architecture (§6, METHOD.md §7).

=============  ===============================  ======================================
method         guide                            loss
=============  ===============================  ======================================
``VAE``        mean-field Gaussian              ``Trace_ELBO``
``IWAE``       mean-field Gaussian              ``TraceIWAE_ELBO(S)``
``MAPA``       MAPA table (kernel on the data)  ``TraceMAPA_ELBO(K, S)``
``MAPA-GT``    true index posterior (Eq. 7)     ``TraceMAPA_ELBO(K, S)``
``MAPA-naive`` uniform table                    ``TraceMAPA_ELBO(K, S)``
=============  ===============================  ======================================

After training, :class:`LearnedModel` is the original model (Eq. 1) each method
defines: the decoder with a standard-normal prior (VAE, IWAE) or the decoder with
the prior recovered from the codes by a Gaussian copula (MAPA variants, §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn

from ..evaluation.index_loglik import index_log_likelihood
from ..infer import MAPAGuide, TraceIWAE_ELBO, TraceMAPA_ELBO
from ..models import AmortizedCodebook, EmpiricalizedModel, Likelihood, MeanFieldGuide, VAEModel, mlp
from ..priors import FlowPrior, GaussianCopulaPrior
from ..table.posterior_table import PosteriorTable
from .learned_model import LearnedModel

__all__ = ["METHODS", "LearnedModel", "MethodSetup", "build_method", "true_posterior_table"]

METHODS = ("VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive")


def true_posterior_table(
    data: Tensor, true_latents: Tensor, true_decoder: Callable[[Tensor], Tensor], likelihood: Likelihood
) -> PosteriorTable:
    """"MAPA-GT": :math:`q(c_n = i) \\propto p(x_n \\mid f_{true}(z_i))` with the true codes (Eq. 7)."""
    with torch.no_grad():
        means = true_decoder(true_latents)  # (N, D)
        log_p = index_log_likelihood(data, means, likelihood)  # (n, i)
    return PosteriorTable.from_log_probs(log_p)


@dataclass
class MethodSetup:
    """A method ready for :func:`~pyro_mapa.training.fit`: its model, guide, loss and networks."""

    name: str
    model: nn.Module
    guide: Callable
    loss: ELBO
    decoder: nn.Module
    encoder: nn.Module
    likelihood: Likelihood
    latent_dim: int = 1

    def learned_model(self, flow_steps: int = 2000, seed: int = 0) -> LearnedModel:
        """The original generative model this method defines, after training.

        VAE and IWAE: the decoder with its N(0, I) prior. MAPA variants: the decoder with
        the prior recovered from the codes, a Gaussian copula for ``d = 1`` and a
        normalizing flow (:class:`~pyro_mapa.priors.FlowPrior`, ``flow_steps`` Adam steps)
        for ``d > 1`` (§6).
        """
        prior = None
        if isinstance(self.model, EmpiricalizedModel):
            with torch.no_grad():
                codes = self.model.codebook.codes()
            if codes.shape[-1] == 1:
                prior = GaussianCopulaPrior(codes)
            else:
                prior = FlowPrior.fit(codes, steps=flow_steps, seed=seed)
        return LearnedModel(self.decoder, self.likelihood, prior, latent_dim=self.latent_dim)


def build_method(
    name: str,
    data: Tensor,
    likelihood: Likelihood,
    *,
    latent_dim: int = 1,
    hidden: Sequence[int] = (50, 50),
    num_top: int = 5,
    num_samples: int = 5,
    num_particles: int = 10,
    table: PosteriorTable | None = None,
    seed: int = 0,
) -> MethodSetup:
    """Builds one method's model, guide and loss on ``data``.

    Arguments:
        name: One of :data:`METHODS`.
        data: ``(N, D)`` training data.
        likelihood: The observation model (its kernel builds the MAPA table).
        latent_dim: ``d``.
        hidden: Hidden layer sizes of encoder and decoder.
        num_top, num_samples: ``K`` and ``S`` of the MAPA bound.
        num_particles: ``S`` of the IWAE.
        table: The table for the MAPA variants (required for ``MAPA-GT``; built from
            the data with the likelihood's kernel for ``MAPA``; uniform for ``MAPA-naive``).
        seed: Seeds the network initialization.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    n, d_obs = data.shape
    decoder = mlp(latent_dim, d_obs, hidden)
    if name in ("VAE", "IWAE"):
        encoder = mlp(d_obs, 2 * latent_dim, hidden)
        model = VAEModel(decoder, data, latent_dim, likelihood)
        guide = MeanFieldGuide(encoder, data, latent_dim)
        loss: ELBO = (
            Trace_ELBO(max_plate_nesting=1)
            if name == "VAE"
            else TraceIWAE_ELBO(num_particles, max_plate_nesting=1)
        )
        return MethodSetup(name, model, guide, loss, decoder, encoder, likelihood, latent_dim)
    encoder = mlp(d_obs, latent_dim, hidden)
    if table is None:
        if name == "MAPA-GT":
            raise ValueError("MAPA-GT needs table=true_posterior_table(...) built from the true decoder")
        table = (
            PosteriorTable.uniform(n) if name == "MAPA-naive" else PosteriorTable.from_data(data, likelihood.kernel())
        )
    model = EmpiricalizedModel(AmortizedCodebook(encoder, decoder, data), likelihood)
    guide = MAPAGuide(table, site="c", plate="data", data=data)  # catches a table of other data
    loss = TraceMAPA_ELBO(num_top, num_samples, max_plate_nesting=1)
    return MethodSetup(name, model, guide, loss, decoder, encoder, likelihood, latent_dim)
