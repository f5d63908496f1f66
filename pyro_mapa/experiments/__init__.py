"""The paper's experiments: the five synthetic benchmarks, the method registry, the reproduction and its figures.

:mod:`.datasets`, :mod:`.methods` (``build_method``), :mod:`.reproduce` (``pyro-mapa reproduce``),
:mod:`.figures`. Imported on demand (matplotlib is loaded only by :mod:`.figures`).
"""
