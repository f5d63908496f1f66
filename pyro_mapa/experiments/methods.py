"""Deprecated alias of :mod:`pyro_mapa.methods` (removed in the next release)."""

import warnings

from ..methods import *  # noqa: F401,F403
from ..methods import __all__  # noqa: F401

warnings.warn("pyro_mapa.experiments.methods is deprecated: import pyro_mapa.methods", DeprecationWarning, stacklevel=2)
