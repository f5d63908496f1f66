"""Diagnostics in the Pyro + ArviZ workflow.

- :func:`compare` (:mod:`.compare`): held-out log p(x_n) per model (exact for d ≤ 2, importance-sampled
  with PSIS k̂ above) as ArviZ ELPD data, ranked by ``az.compare`` with the SE of the differences.
- :func:`to_inference_data` (:mod:`.inference_data`): latent draws, log weights, posterior-predictive and
  prior draws as ArviZ data; no ``log_likelihood`` group, so ``az.loo`` refuses it instead of misreading it.
- :func:`index_posterior`, :func:`proposal_quality` (:mod:`.proposal_quality`): is the fixed MAPA table a
  good proposal for the model that was learned?
- :func:`importance_diagnostics`, :func:`kish_ess` (:mod:`.importance`): Pareto k̂ and ESS of importance weights.
- :class:`TrainingTrace` (:mod:`.traces`): loss and validation log-likelihood per epoch.
- :func:`collapse_diagnostics` (:mod:`.collapse`, :mod:`.traversal`): active units, I_q(x; z), the model's
  own collapse E_x KL(p_θ(z|x) ‖ p(z)), KL(q_agg ‖ p), exact on a grid for d ≤ 2; latent traversals.

ArviZ is imported only when a function that needs it runs.
"""

from .collapse import (
    ActiveUnits,
    CollapseReport,
    Estimate,
    QDivergences,
    active_units,
    collapse_diagnostics,
    model_collapse_kl,
    q_divergences,
)
from .compare import Comparison, PointwiseLogLikelihood, compare, pointwise_log_likelihood
from .importance import ImportanceDiagnostics, importance_diagnostics, kish_ess
from .inference_data import aggregate_posterior, to_inference_data
from .normality import HenzeZirklerTest, henze_zirkler, henze_zirkler_beta, henze_zirkler_test
from .proposal_quality import ProposalQuality, index_posterior, proposal_quality
from .traces import TrainingTrace
from .traversal import latent_traversal_figure

__all__ = [
    "Comparison",
    "PointwiseLogLikelihood",
    "aggregate_posterior",
    "compare",
    "pointwise_log_likelihood",
    "ActiveUnits",
    "CollapseReport",
    "Estimate",
    "QDivergences",
    "active_units",
    "collapse_diagnostics",
    "latent_traversal_figure",
    "model_collapse_kl",
    "q_divergences",
    "ImportanceDiagnostics",
    "ProposalQuality",
    "TrainingTrace",
    "importance_diagnostics",
    "index_posterior",
    "kish_ess",
    "proposal_quality",
    "to_inference_data",
    "HenzeZirklerTest",
    "henze_zirkler",
    "henze_zirkler_beta",
    "henze_zirkler_test",
]
