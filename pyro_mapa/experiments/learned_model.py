"""Moved: :class:`~pyro_mapa.priors.LearnedModel` (also ``pyro_mapa.LearnedModel``); kept here as an alias."""

from ..priors.learned_model import LearnedModel

__all__ = ["LearnedModel"]
