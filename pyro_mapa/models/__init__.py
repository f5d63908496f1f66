"""Models and their building blocks: networks, likelihoods, the codebook, the VAE and the empiricalized model.

One decoder, several ways to train it; switching is a change of guide and loss
(see :mod:`.vae`).
"""

from .codebook import AmortizedCodebook
from .distributions import TableCategorical, UniformIndex
from .empiricalized import EmpiricalizedModel
from .likelihoods import BernoulliLikelihood, Likelihood, NormalLikelihood
from .networks import mlp
from .vae import MeanFieldGuide, VAEModel

__all__ = [
    "AmortizedCodebook",
    "BernoulliLikelihood",
    "EmpiricalizedModel",
    "Likelihood",
    "MeanFieldGuide",
    "NormalLikelihood",
    "TableCategorical",
    "UniformIndex",
    "VAEModel",
    "mlp",
]
