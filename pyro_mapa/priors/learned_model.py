"""The original generative model a trained method defines (decoder plus recovered prior), evaluated exactly.

It lives beside the priors it carries, below ``diagnostics`` (which compares such models) and
``experiments`` (whose method registry builds them)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import as_data_tensor, check_positive_int
from ..evaluation import (
    fit_proposal,
    grid_log_likelihood,
    importance_log_likelihood,
    quadrature_log_likelihood,
)
from ..evaluation.local_quadrature import local_quadrature_log_likelihood
from ..models import Likelihood
from ..models.vae import check_decoder_input
from .copula import GaussianCopulaPrior

__all__ = ["LearnedModel"]


@dataclass
class LearnedModel:
    """Decoder plus prior: the original model (Eq. 1) a method defines.

    ``prior`` is ``None`` (standard normal), a :class:`~pyro_mapa.priors.GaussianCopulaPrior`
    (``z = T(u)``, ``u ~ N(0, 1)``) or any prior with ``log_prob`` and ``sample`` (e.g.
    :class:`~pyro_mapa.priors.FlowPrior`).

    When built, the decoder is run once on a ``(1, latent_dim)`` code: a decoder of another
    input size is refused (naming both sizes), and its output size is kept as
    ``num_columns``, against which test points are checked.
    """

    decoder: nn.Module
    likelihood: Likelihood
    prior: object | None = None
    latent_dim: int = 1

    def __post_init__(self) -> None:
        self.latent_dim = check_positive_int(self.latent_dim, "latent_dim")
        self.num_columns: int | None = None
        if isinstance(self.decoder, nn.Module):
            self.num_columns = check_decoder_input(self.decoder, self.latent_dim)

    def check_points(self, x, name: str = "x") -> Tensor:
        """``x`` as an ``(n, D)`` tensor of finite values with the model's number of columns.

        Raises:
            TypeError, ValueError: not a tensor (or NumPy array) of shape ``(n, D)``; a row with
                NaN or inf; another number of columns than the decoder outputs.
        """
        x = as_data_tensor(x, name)
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (n, D), got shape {tuple(x.shape)}")
        if self.num_columns is not None and x.shape[1] != self.num_columns:
            raise ValueError(
                f"{name} has {x.shape[1]} columns, the model {self.num_columns} (its decoder's outputs): pass "
                f"points of the training data's shape (n, {self.num_columns})"
            )
        return x

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

        For ``d > 2`` use :meth:`importance_log_prob`. Rows with NaN or inf, and points of
        another number of columns than the model's, are refused.
        """
        x64 = self.check_points(x).to(torch.float64)
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

    def local_log_prob(self, x: Tensor, **kwargs) -> Tensor:
        """Exact per-point ``log p(x)`` for ``d <= 2`` however narrow the posterior (float64).

        :func:`~pyro_mapa.evaluation.local_quadrature_log_likelihood` (modes found by Newton's method,
        a whitened grid around each): use it when the observation noise is small against the
        decoder's scale, where :meth:`log_prob`'s fixed grid cannot resolve ``p(z | x)``. The
        decoder and prior are run on float64 copies; ``kwargs`` go to the evaluator.
        """
        if self.latent_dim > 2:
            raise ValueError("local quadrature is for latent dimension 1 or 2; use importance_log_prob for d > 2")
        x64 = self.check_points(x).to(torch.float64)
        decoder = copy.deepcopy(self.decoder).double() if isinstance(self.decoder, nn.Module) else self.decoder
        prior = self.prior
        if isinstance(prior, nn.Module):
            prior = copy.deepcopy(prior).double()
        if prior is None or isinstance(prior, GaussianCopulaPrior):
            decode = decoder if prior is None else (lambda u: decoder(prior.transform(u)))
            log_prior = LearnedModel(decoder, self.likelihood, None, self.latent_dim).log_prior
        else:
            decode, log_prior = decoder, prior.log_prob
        return local_quadrature_log_likelihood(x64, decode, log_prior, self.likelihood, self.latent_dim, **kwargs)

    def importance_log_prob(
        self, x: Tensor, num_samples: int = 1000, fit_steps: int = 2000, seed: int = 0, proposal=None
    ):
        """``log p(x)`` by importance sampling with a fitted mixture proposal (any ``d``).

        A Gaussian-copula prior is integrated in ``u`` (standard normal), through :meth:`decode`.
        ``proposal`` (e.g. a :class:`~pyro_mapa.evaluation.CodeMixtureProposal` for a smoothed
        MAPA model) replaces the fitted one.

        Returns:
            :class:`~pyro_mapa.evaluation.ImportanceEstimate` (``log_px``, ``stderr``, ``log_weights``).
        """
        x = self.check_points(x)
        if isinstance(self.prior, GaussianCopulaPrior):
            decode, log_prior = self.decode, LearnedModel(self.decoder, self.likelihood, None, self.latent_dim).log_prior
        else:
            decode, log_prior = self.decoder, self.log_prior
        if proposal is None:
            proposal = fit_proposal(x, decode, log_prior, self.likelihood, self.latent_dim, steps=fit_steps, seed=seed)
        return importance_log_likelihood(x, decode, log_prior, self.likelihood, proposal,
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
