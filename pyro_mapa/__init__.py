"""pyro_mapa: MAPA (Model-Agnostic Posterior Approximation) for training VAEs with Pyro.

The whole public API::

    kernels      GaussianKernel, BernoulliKernel, ProximityKernel
    table        PosteriorTable
    guide        MAPAGuide
    networks     AmortizedCodebook, mlp
    models       EmpiricalizedModel, VAEModel, MeanFieldGuide
    likelihoods  NormalLikelihood, BernoulliLikelihood
    losses       TraceMAPA_ELBO, TraceIWAE_ELBO
    priors       GaussianCopulaPrior (d = 1), FlowPrior (zuko), KDEPrior
    evaluation   empirical_log_likelihood, quadrature_log_likelihood,
                 fit_proposal, importance_log_likelihood (d > 2), ImportanceEstimate, MixtureProposal
    diagnostics  to_inference_data (more in pyro_mapa.diagnostics)

Reference: Yacoby, Pan and Doshi-Velez, "Towards Model-Agnostic Posterior
Approximation for Fast and Accurate Variational Autoencoders", AABI 2024.
"""

from .baselines import EmpiricalizedModel, MeanFieldGuide, VAEModel, mlp
from .codebook import AmortizedCodebook
from .diagnostics import to_inference_data
from .distributions import TableCategorical, UniformIndex
from .evaluation import (
    ImportanceEstimate,
    MixtureProposal,
    empirical_log_likelihood,
    fit_proposal,
    importance_log_likelihood,
    quadrature_log_likelihood,
)
from .guide import MAPAGuide
from .iwae_elbo import TraceIWAE_ELBO
from .kernels import BernoulliKernel, GaussianKernel, ProximityKernel
from .likelihoods import BernoulliLikelihood, NormalLikelihood
from .mapa_elbo import NonFiniteLossError, TraceMAPA_ELBO
from .posterior_table import PosteriorTable
from .priors import FlowPrior, GaussianCopulaPrior, KDEPrior

__version__ = "0.1.0"

__all__ = [
    "AmortizedCodebook",
    "BernoulliKernel",
    "BernoulliLikelihood",
    "EmpiricalizedModel",
    "FlowPrior",
    "GaussianCopulaPrior",
    "GaussianKernel",
    "ImportanceEstimate",
    "KDEPrior",
    "MAPAGuide",
    "MeanFieldGuide",
    "MixtureProposal",
    "NonFiniteLossError",
    "NormalLikelihood",
    "PosteriorTable",
    "ProximityKernel",
    "TableCategorical",
    "TraceIWAE_ELBO",
    "TraceMAPA_ELBO",
    "UniformIndex",
    "VAEModel",
    "empirical_log_likelihood",
    "fit_proposal",
    "importance_log_likelihood",
    "mlp",
    "quadrature_log_likelihood",
    "to_inference_data",
]
