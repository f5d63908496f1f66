"""Deprecated: ``pyro_mapa.experiments.datasets`` and ``.methods`` moved to :mod:`pyro_mapa.datasets` and
:mod:`pyro_mapa.methods`; the reproduction, provenance and figures moved out of the installed package to the
repository's ``experiments/pyro_mapa_experiments``. The two aliases below go away in the next release.
"""
