"""Deprecated alias of :mod:`pyro_mapa.datasets` (removed in the next release)."""

import warnings

from ..datasets import *  # noqa: F401,F403
from ..datasets import __all__  # noqa: F401

warnings.warn("pyro_mapa.experiments.datasets is deprecated: import pyro_mapa.datasets", DeprecationWarning, stacklevel=2)
