"""Training: the SVI loop shared by every method, LiBI's two stages, checkpoints, and data-parallel training."""

from .fit import FitResult, fit, network_pass_counts
from .libi import LiBIResult, fit_libi, marginal_nll

__all__ = ["FitResult", "LiBIResult", "fit", "fit_libi", "marginal_nll", "network_pass_counts"]
