"""The paper's experiments on top of ``pyro_mapa``: reproduction, provenance, checks, figures, LiBI's benchmarks.

Not part of the installed library (``pip install -e ./experiments`` from a clone of the repository):
:mod:`.reproduce` (``pyro-mapa reproduce``), :mod:`.check` (``reproduce --check``), :mod:`.provenance`,
:mod:`.figures` (matplotlib), :mod:`.collapse_summary`, :mod:`.libi_benchmarks` and :mod:`.libi_metrics`
(``pyro-mapa libi-benchmarks``). The data sets and the method registry are the library's
(:mod:`pyro_mapa.datasets`, :mod:`pyro_mapa.methods`).
"""
