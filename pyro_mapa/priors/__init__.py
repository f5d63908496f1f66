"""Prior recovery (§5, App. C.3): a parametric prior over the learned codes.

After training MAPA the codes :math:`z_i = g_\\phi(x_i)` form an empirical prior; these turn
it into a generative prior, so the original model generates and is evaluated like a VAE:

- :class:`GaussianCopulaPrior` (``d = 1``): a monotone transform of a standard normal.
- :class:`FlowPrior`: a normalizing flow (zuko's NSF or MAF) fitted by maximum likelihood
  to the standardized codes, with early stopping on held-out codes.
- :class:`KDEPrior`: a Gaussian kernel density estimate, no fitting, ``O(N)`` per density.
- :class:`CodeMixturePrior`: the smoothed empiricalized model's own prior (an equal-weight
  Gaussian mixture on the codes of scale ``tau * code_scale``): nothing to recover.

:class:`LearnedModel` is the trained generative model: a decoder with one of these priors (or the
standard normal), with exact (``d <= 2``) and importance-sampled log-likelihoods.

:class:`FlowPrior` and :class:`KDEPrior` give :meth:`~FlowPrior.distribution`, a Pyro
distribution over :math:`\\mathbb R^d`, usable as ``pyro.sample("z", prior.distribution())``.
"""

from .code_mixture import CodeMixturePrior
from .copula import GaussianCopulaPrior
from .distribution import PriorDistribution
from .flow import FlowPrior
from .kde import KDEPrior
from .learned_model import LearnedModel

__all__ = ["CodeMixturePrior", "FlowPrior", "GaussianCopulaPrior", "KDEPrior", "LearnedModel", "PriorDistribution"]
