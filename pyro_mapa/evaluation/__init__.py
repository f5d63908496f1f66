"""Log-likelihood evaluators (docs/method.md §7).

- Exact (:mod:`.exact`): the empiricalized model by enumeration, 1-D latents by quadrature,
  1-D and 2-D latents under any prior by grid quadrature, and by quadrature around each posterior
  mode (:mod:`.local_quadrature`) when the posterior is too narrow for a fixed grid. All rest on the one
  log-likelihood matrix of :mod:`.index_loglik`.
- Any latent dimension (:mod:`.importance`, :mod:`.proposal`, :mod:`.fit_proposal`):
  importance sampling with a fitted amortized mixture proposal, reporting a Monte-Carlo
  standard error and keeping the log-weights for diagnostics.
- The latent posterior (:mod:`.latent_posterior`): :math:`p_\\theta(z \\mid x)` on a grid for ``d ≤ 2``,
  the differentiable grid log-likelihood (LiBI's stage 1), KL(q(z|x) ‖ p_θ(z|x)).
- A user's own Pyro model (:mod:`.pyro_model`): a recovered prior put in place of a site's
  prior by a handler, the per-point log joint, grid and importance-sampling log-likelihoods.
"""

from .code_mixture_proposal import CodeMixtureProposal
from .exact import (
    empirical_log_likelihood,
    gauss_legendre_grid,
    grid_log_likelihood,
    quadrature_log_likelihood,
)
from .fit_proposal import fit_proposal
from .local_quadrature import local_quadrature_log_likelihood
from .importance import ImportanceEstimate, importance_from_log_joint, importance_log_likelihood, stratified_iwae_bound
from .index_loglik import index_log_likelihood, log_mixture_likelihood
from .latent_posterior import (
    GridMassError,
    GridPosterior,
    LatentGrid,
    exact_posterior,
    grid_log_marginal,
    grid_log_masses,
    importance_log_marginal,
    kl_to_posterior,
    latent_grid,
    standard_normal_log_prob,
)
from .proposal import MixtureProposal, Proposal
from .pyro_model import (
    PyroModelJoint,
    WithPriorMessenger,
    model_grid_log_likelihood,
    model_importance_log_likelihood,
    with_prior,
)

__all__ = [
    "CodeMixtureProposal",
    "GridMassError",
    "GridPosterior",
    "LatentGrid",
    "exact_posterior",
    "grid_log_marginal",
    "grid_log_masses",
    "importance_log_marginal",
    "kl_to_posterior",
    "latent_grid",
    "standard_normal_log_prob",
    "ImportanceEstimate",
    "PyroModelJoint",
    "WithPriorMessenger",
    "importance_from_log_joint",
    "model_grid_log_likelihood",
    "model_importance_log_likelihood",
    "with_prior",
    "MixtureProposal",
    "Proposal",
    "empirical_log_likelihood",
    "fit_proposal",
    "gauss_legendre_grid",
    "grid_log_likelihood",
    "importance_log_likelihood",
    "index_log_likelihood",
    "local_quadrature_log_likelihood",
    "log_mixture_likelihood",
    "quadrature_log_likelihood",
    "stratified_iwae_bound",
]
