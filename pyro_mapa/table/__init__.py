"""The MAPA table: kernels, building, remainder sampling, the table itself and its files.

- :mod:`.kernels`: :class:`ProximityKernel`, :class:`GaussianKernel`, :class:`BernoulliKernel`.
- :mod:`.build`: exact row-blocked building (one GEMM per block); :mod:`.neighbors`: the
  approximate-neighbour (faiss HNSW) backend.
- :mod:`.distances`: the distance step both use: centred, scaled data, the arithmetic chosen by
  an error bound (float32 GEMM, float64 GEMM or direct float64 sums), own entries exactly zero.
- :mod:`.sampling`: remainder sampling with and without replacement, as pure tensor functions.
- :mod:`.counter_rng`: counter-based uniforms, so draws are a pure function of (seed, step, row, slot).
- :mod:`.posterior_table`: :class:`PosteriorTable`, a thin holder of the sorted rows.
- :mod:`.storage`: the checksummed, atomic file format and the on-disk cache.
- :mod:`.data_check`: per-row hashes that refuse a table built on other data than the model's.
"""

from .build import build_table, data_fingerprint, row_hashes
from .data_check import check_table_data, mismatched_rows
from .kernels import BernoulliKernel, GaussianKernel, ProximityKernel, squared_distances
from .posterior_table import PosteriorTable, TableRows
from .sampling import remainder_log_probs

__all__ = [
    "BernoulliKernel",
    "GaussianKernel",
    "PosteriorTable",
    "ProximityKernel",
    "TableRows",
    "build_table",
    "check_table_data",
    "data_fingerprint",
    "mismatched_rows",
    "remainder_log_probs",
    "row_hashes",
    "squared_distances",
]
