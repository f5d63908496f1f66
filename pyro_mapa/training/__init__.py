"""Training: the SVI loop shared by every method, LiBI's rounds, ExactDecoder's two stages, checkpoints, and data-parallel training."""

from .exact_decoder import ExactDecoderResult, fit_exact_decoder, marginal_nll
from .fit import FitResult, fit, network_pass_counts
from .libi import LiBIResult, fit_libi

__all__ = ["ExactDecoderResult", "FitResult", "LiBIResult", "fit", "fit_exact_decoder", "fit_libi", "marginal_nll",
           "network_pass_counts"]
