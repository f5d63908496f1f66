"""pyro_mapa: MAPA (Model-Agnostic Posterior Approximation) for training VAEs with Pyro.

The whole public API, by layer (subpackage)::

    table        GaussianKernel, BernoulliKernel, ProximityKernel, PosteriorTable
    models       AmortizedCodebook, EmpiricalizedModel, VAEModel, MeanFieldGuide, mlp,
                 NormalLikelihood, BernoulliLikelihood, TableCategorical, UniformIndex,
                 LIDVAEDecoder, ICNN, BrenierMap (LIDVAE), FreeCodebook (free codes)
    infer        empiricalize (any Pyro model; EmpiricalizedPyroModel), MAPAGuide, TraceMAPA_ELBO, TraceIWAE_ELBO, TraceInfoVAE_ELBO (InfoVAE),
                 HamiltonianGuide (HVAE)
    evaluation   empirical_log_likelihood, quadrature_log_likelihood, exact_posterior, kl_to_posterior,
                 fit_proposal, importance_log_likelihood (d > 2), ImportanceEstimate, MixtureProposal
    priors       GaussianCopulaPrior (d = 1), FlowPrior (zuko), KDEPrior, CodeMixturePrior (smoothed codes),
                 LearnedModel (decoder plus prior: the trained generative model)
    diagnostics  to_inference_data, collapse_diagnostics (more in pyro_mapa.diagnostics)
    errors       NonFiniteLossError

``pyro_mapa.training`` (``fit``, LiBI's ``fit_libi``, checkpoints, data-parallel), ``pyro_mapa.datasets``
(the synthetic benchmarks with exact densities) and ``pyro_mapa.methods`` (``build_method``, the registry
of compared methods) are imported on demand. The paper's reproduction, provenance and figures are not
part of the installed package: they live in the repository's ``experiments/`` folder
(``pyro_mapa_experiments``, ``pip install -e ./experiments``).

Reference: Yacoby, Pan and Doshi-Velez, "Towards Model-Agnostic Posterior
Approximation for Fast and Accurate Variational Autoencoders", AABI 2024.
"""

from .diagnostics import collapse_diagnostics, to_inference_data
from .errors import NonFiniteLossError
from .evaluation import (
    ImportanceEstimate,
    MixtureProposal,
    empirical_log_likelihood,
    exact_posterior,
    fit_proposal,
    importance_log_likelihood,
    kl_to_posterior,
    quadrature_log_likelihood,
)
from .infer import (
    EmpiricalizedPyroModel,
    HamiltonianGuide,
    MAPAGuide,
    TraceInfoVAE_ELBO,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    empiricalize,
)
from .models import (
    ICNN,
    AmortizedCodebook,
    BernoulliLikelihood,
    BrenierMap,
    EmpiricalizedModel,
    FreeCodebook,
    LIDVAEDecoder,
    MeanFieldGuide,
    NormalLikelihood,
    TableCategorical,
    UniformIndex,
    VAEModel,
    mlp,
)
from .priors import CodeMixturePrior, FlowPrior, GaussianCopulaPrior, KDEPrior, LearnedModel
from .table import BernoulliKernel, GaussianKernel, PosteriorTable, ProximityKernel

__version__ = "0.1.0"

__all__ = [
    "AmortizedCodebook",
    "BernoulliKernel",
    "BernoulliLikelihood",
    "BrenierMap",
    "CodeMixturePrior",
    "EmpiricalizedModel",
    "EmpiricalizedPyroModel",
    "FlowPrior",
    "FreeCodebook",
    "GaussianCopulaPrior",
    "GaussianKernel",
    "HamiltonianGuide",
    "ICNN",
    "ImportanceEstimate",
    "KDEPrior",
    "LearnedModel",
    "LIDVAEDecoder",
    "MAPAGuide",
    "MeanFieldGuide",
    "MixtureProposal",
    "NonFiniteLossError",
    "NormalLikelihood",
    "PosteriorTable",
    "ProximityKernel",
    "TableCategorical",
    "TraceIWAE_ELBO",
    "TraceInfoVAE_ELBO",
    "TraceMAPA_ELBO",
    "UniformIndex",
    "VAEModel",
    "collapse_diagnostics",
    "empirical_log_likelihood",
    "empiricalize",
    "exact_posterior",
    "fit_proposal",
    "importance_log_likelihood",
    "kl_to_posterior",
    "mlp",
    "quadrature_log_likelihood",
    "to_inference_data",
]
