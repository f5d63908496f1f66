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

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn

from ..evaluation import (
    fit_proposal,
    grid_log_likelihood,
    importance_log_likelihood,
    quadrature_log_likelihood,
)
from ..evaluation.index_loglik import index_log_likelihood
from ..infer import MAPAGuide, TraceIWAE_ELBO, TraceMAPA_ELBO
from ..models import AmortizedCodebook, EmpiricalizedModel, Likelihood, MeanFieldGuide, VAEModel, mlp
from ..priors import FlowPrior, GaussianCopulaPrior
from ..table.posterior_table import PosteriorTable

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


@dataclass
class LearnedModel:
    """Decoder plus prior: the original model (Eq. 1) a method defines.

    ``prior`` is ``None`` (standard normal), a :class:`~pyro_mapa.priors.GaussianCopulaPrior`
    (``z = T(u)``, ``u ~ N(0, 1)``) or any prior with ``log_prob`` and ``sample`` (e.g.
    :class:`~pyro_mapa.priors.FlowPrior`).
    """

    decoder: nn.Module
    likelihood: Likelihood
    prior: object | None = None
    latent_dim: int = 1

    def decode(self, u: Tensor) -> Tensor:
        """Decoder outputs for standard-normal ``u`` (copula) or for codes ``z`` (other priors)."""
        z = self.prior.transform(u) if isinstance(self.prior, GaussianCopulaPrior) else u
        return self.decoder(z)

    def log_prior(self, z: Tensor) -> Tensor:
        """Log density of the prior on ``z`` (not defined for the copula, which is evaluated in ``u``)."""
        if self.prior is None:
            return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        return self.prior.log_prob(z.to(torch.get_default_dtype())).to(z.dtype)

    @torch.no_grad()
    def log_prob(self, x: Tensor, num_points: int | None = None) -> Tensor:
        """Exact per-point ``log p(x)`` by quadrature, for ``d = 1`` (in ``u``) or ``d = 2`` (on a grid in ``z``).

        For ``d > 2`` use :meth:`importance_log_prob`.
        """
        x64 = x.to(torch.float64)
        dec64 = _Float64(self)
        if self.latent_dim == 1 and (self.prior is None or isinstance(self.prior, GaussianCopulaPrior)):
            return quadrature_log_likelihood(x64, dec64, self.likelihood, num_points=num_points or 4001,
                                             low=-7.0, high=7.0)
        if self.latent_dim > 2:
            raise ValueError("exact quadrature is for latent dimension 1 or 2; use importance_log_prob for d > 2")
        if self.prior is None:
            low, high = [-7.0] * self.latent_dim, [7.0] * self.latent_dim
        else:
            codes = self.prior.sample((4000,)).double()
            spread = codes.std(0)
            low = (codes.min(0).values - 2 * spread).tolist()
            high = (codes.max(0).values + 2 * spread).tolist()
        n = num_points or (4001 if self.latent_dim == 1 else 301)
        return grid_log_likelihood(x64, dec64, lambda z: self.log_prior(z).double(), self.likelihood,
                                   low, high, num_points=n)

    def importance_log_prob(self, x: Tensor, num_samples: int = 1000, fit_steps: int = 2000, seed: int = 0):
        """``log p(x)`` by importance sampling with a fitted mixture proposal (any ``d``).

        Returns:
            :class:`~pyro_mapa.evaluation.ImportanceEstimate` (``log_px``, ``stderr``, ``log_weights``).
        """
        proposal = fit_proposal(x, self.decoder, self.log_prior, self.likelihood, self.latent_dim,
                                steps=fit_steps, seed=seed)
        return importance_log_likelihood(x, self.decoder, self.log_prior, self.likelihood, proposal,
                                         num_samples=num_samples, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """New observations from the learned generative model."""
        if self.prior is None or isinstance(self.prior, GaussianCopulaPrior):
            z = torch.randn(num, self.latent_dim, generator=generator)
        else:
            z = self.prior.sample((num,), generator=generator)
        params = self.decode(z)
        return self.likelihood(params).sample()


class _Float64:
    """Runs a learned model's decoder in float32 on float64 nodes and returns float64."""

    def __init__(self, learned: LearnedModel) -> None:
        self.learned = learned

    def __call__(self, u: Tensor) -> Tensor:
        return self.learned.decode(u.float()).double()


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
