"""Training: the SVI loop shared by every method, LiBI's rounds, ExactDecoder's two stages, checkpoints, and data-parallel training."""

from .exact_decoder import ExactDecoderResult, fit_exact_decoder, marginal_nll
from .fit import FitResult, fit, network_pass_counts
from .libi import CodeLoss, LiBIResult, LiBIRound, fit_libi, libi_code_loss, load_mean_head

__all__ = ["CodeLoss", "ExactDecoderResult", "FitResult", "LiBIResult", "LiBIRound", "fit", "fit_exact_decoder",
           "fit_libi", "libi_code_loss", "load_mean_head", "marginal_nll", "network_pass_counts"]
