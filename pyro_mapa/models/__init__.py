"""Models and their building blocks: networks, likelihoods, the codebook, the VAE, the empiricalized model,
and the LIDVAE's injective decoder (input-convex networks and Brenier maps).

One decoder, several ways to train it; switching is a change of guide and loss
(see :mod:`.vae`).
"""

from .codebook import AmortizedCodebook
from .distributions import TableCategorical, UniformIndex
from .empiricalized import EmpiricalizedModel
from .free_codebook import FreeCodebook
from .icnn import ICNN, BrenierMap
from .lidvae import FullRankLinear, LIDVAEDecoder
from .likelihoods import BernoulliLikelihood, Likelihood, NormalLikelihood
from .networks import mlp
from .vae import MeanFieldGuide, VAEModel

__all__ = [
    "AmortizedCodebook",
    "BernoulliLikelihood",
    "BrenierMap",
    "EmpiricalizedModel",
    "FreeCodebook",
    "FullRankLinear",
    "ICNN",
    "LIDVAEDecoder",
    "Likelihood",
    "MeanFieldGuide",
    "NormalLikelihood",
    "TableCategorical",
    "UniformIndex",
    "VAEModel",
    "mlp",
]
