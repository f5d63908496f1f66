"""Training: the SVI loop shared by every method, checkpoints, and data-parallel training."""

from .fit import FitResult, fit, network_pass_counts

__all__ = ["FitResult", "fit", "network_pass_counts"]
