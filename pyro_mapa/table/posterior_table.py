"""``PosteriorTable``: the MAPA posterior :math:`q(c_n = \\cdot)` of every row, built once.

.. math:: q(c_n = i) = \\kappa(x_n, x_i) / \\sum_j \\kappa(x_n, x_j)        (Eq. 8)

Each row ``n`` is stored sorted by decreasing probability: ``indices[n, :]`` (``M`` columns) and
``log_probs[n, :]``, normalized by the *exact* normalizer over all ``N`` columns. ``M = N`` is exact;
``M < N`` (``max_support``) drops the tail, which keeps the MAPA bound valid (docs/method.md §5, fact 8) at
memory ``O(N·M)``. Sorted rows make ``top_k`` a slice and the remainder a contiguous block.

This class is a thin holder: building is :mod:`~pyro_mapa.table.build`, remainder
sampling :mod:`~pyro_mapa.table.sampling`, files and cache :mod:`~pyro_mapa.table.storage`.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import as_index_tensor, check_nonnegative_int
from .build import (
    build_table,
    check_build_arguments,
    check_max_support,
    data_fingerprint,
    default_chunk_size,
    row_hashes,
)
from .data_check import check_table_data, mismatched_rows
from .kernels import ProximityKernel
from .sampling import (
    checked_uniforms,
    log_suffix_mass,
    remainder_log_probs,
    sample_with_replacement,
    sample_without_replacement,
)
from .storage import cached_table, load_table, save_table

__all__ = ["PosteriorTable", "TableRows"]


class TableRows(NamedTuple):
    """Sorted supports of a batch of rows: ``indices`` and ``log_probs``, both ``(B, M)``."""

    indices: Tensor
    log_probs: Tensor


class PosteriorTable:
    """The MAPA posterior :math:`q(c_n = \\cdot)` for every row, sorted, possibly truncated.

    Build it with :meth:`from_data` (the kernel), :meth:`uniform` ("MAPA-naive") or :meth:`from_log_probs` ("MAPA-GT").

    Arguments:
        indices: ``(R, M)`` long tensor, column indices of each row's support in
            decreasing order of probability.
        log_probs: ``(R, M)`` matching log-probabilities, normalized over all
            ``num_categories`` columns (so a truncated row sums to at most one).
        num_categories: ``N``, the number of codes (the index site's support size).
        log_normalizer: Optional ``(R,)`` row log-normalizers of the kernel.
        fingerprint: Optional :func:`data_fingerprint` of the data the table was built on.
        config: Optional JSON-serializable description (kernel settings, ...).
        row_offset: For a shard (see ``from_data(rows=...)``): the data row of its first row.
            Row arguments of every query are *data* rows.
        total_rows: The number of data rows of the whole data set (default: offset + R).
        row_hashes: Optional ``(total_rows,)`` int64 :func:`~pyro_mapa.table.build.row_hashes`
            of the data, kept on the CPU: how a training step tells that the rows the model
            observes are the rows the table was built on (:meth:`mismatched_rows`).
        row_shape: The shape of one data row (e.g. ``(D,)``), stored with ``row_hashes``.

    Example:
        >>> table = PosteriorTable.from_data(torch.tensor([[0.0], [0.1], [1.0]]), GaussianKernel(0.1))
        >>> table.top_k(None, 1).indices.flatten()
        tensor([0, 1, 2])
    """

    def __init__(
        self,
        indices: Tensor,
        log_probs: Tensor,
        num_categories: int,
        log_normalizer: Tensor | None = None,
        fingerprint: str | None = None,
        config: dict[str, Any] | None = None,
        row_offset: int = 0,
        total_rows: int | None = None,
        row_hashes: Tensor | None = None,
        row_shape: tuple[int, ...] | None = None,
    ) -> None:
        if indices.shape != log_probs.shape or indices.dim() != 2:
            raise ValueError(
                f"indices and log_probs must both have shape (R, M), got "
                f"{tuple(indices.shape)} and {tuple(log_probs.shape)}"
            )
        if indices.shape[1] < 1:
            raise ValueError("a PosteriorTable needs at least one entry per row")
        self.indices = indices
        self.log_probs = log_probs
        self.num_categories = int(num_categories)
        self.log_normalizer = log_normalizer
        self.fingerprint = fingerprint
        self.config = dict(config or {})
        self._log_suffix: Tensor | None = None  # built lazily by log_suffix_mass()
        self.log_normalizer_se: Tensor | None = None  # set by the sampled normalizer only
        # A shard holds data rows [row_offset, row_offset + R) of a data set of total_rows.
        self.row_offset = int(row_offset)
        self.total_rows = int(total_rows) if total_rows is not None else self.row_offset + indices.shape[0]
        if row_hashes is not None and tuple(row_hashes.shape) != (self.total_rows,):
            raise ValueError(f"row_hashes must have shape ({self.total_rows},), got {tuple(row_hashes.shape)}")
        self.row_hashes = None if row_hashes is None else row_hashes.to("cpu", torch.int64)
        self.row_shape = None if row_shape is None else tuple(int(d) for d in row_shape)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_data(
        cls,
        data: Tensor,
        kernel: ProximityKernel,
        *,
        max_support: int | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
        rows: range | None = None,
        neighbors: str = "exact",
        normalizer: str = "exact",
        num_normalizer_samples: int = 1024,
        seed: int = 0,
        hnsw_options: dict[str, int] | None = None,
    ) -> PosteriorTable:
        """Builds the MAPA table of ``data`` under ``kernel`` (Eq. 8), exactly, in row chunks.

        Arguments:
            data: ``(N, D)`` observations, finite floats (float16/bfloat16 data give a float32 table).
            kernel: A :class:`~pyro_mapa.table.kernels.ProximityKernel`.
            max_support: Keep only each row's top ``M`` entries (memory ``O(N·M)``);
                the log-normalizer stays exact over all ``N``. Default: full rows.
            chunk_size: Query rows per block (memory ``O(chunk·N)``).
            device: Where to compute and keep the table (default: ``data.device``; not ``"meta"``).
            progress: Show a tqdm progress bar (default: for large ``N``).
            rows: Build only these data rows (a contiguous ``range``), e.g. one process's
                shard in data-parallel training; every row still covers all ``N`` columns.
            neighbors: ``"exact"`` (default) or ``"hnsw"``: approximate top-``M`` candidates
                from a faiss HNSW graph, kernel values exact (needs ``max_support`` and
                ``pip install faiss-cpu``; recall in docs/scaling.md).
            normalizer: With ``neighbors="hnsw"``: ``"exact"`` (an ``O(N²)`` logsumexp pass) or
                ``"sampled"`` (tail estimated from ``num_normalizer_samples`` random columns;
                its per-row standard error is kept in ``table.log_normalizer_se``).
            seed: Seeds the sampled normalizer.
            hnsw_options: ``hnsw_m``, ``ef_construction``, ``ef_search`` for the faiss graph
                (raise ``ef_search`` for recall).
        """
        data = check_build_arguments(data, kernel, max_support, chunk_size, rows, neighbors, normalizer, device)
        n = data.shape[0]
        fingerprint = data_fingerprint(data)
        hashes = {"row_hashes": row_hashes(data), "row_shape": tuple(data.shape[1:])}
        x = data.to(device) if device is not None else data
        if neighbors == "hnsw":
            if max_support is None or rows is not None:
                raise ValueError("neighbors='hnsw' needs max_support=M and builds all rows (rows=None)")
            from .neighbors import approximate_table_rows

            idx, lp, lz, lz_se = approximate_table_rows(
                x.detach(), kernel, max_support, normalizer, num_normalizer_samples, seed, **(hnsw_options or {})
            )
            table = cls(idx, lp, n, log_normalizer=lz, fingerprint=fingerprint,
                        config={**kernel.config(), "max_support": max_support, "neighbors": "hnsw",
                                "normalizer": normalizer}, total_rows=n, **hashes)
            table.log_normalizer_se = lz_se
            return table
        if normalizer != "exact":
            raise ValueError("normalizer='sampled' goes with neighbors='hnsw'; the exact builder is exact")
        indices, log_probs, log_norm = build_table(
            x.detach(), kernel, max_support=max_support, chunk_size=chunk_size, progress=progress, rows=rows
        )
        return cls(
            indices,
            log_probs,
            n,
            log_normalizer=log_norm,
            fingerprint=fingerprint,
            config={**kernel.config(), "max_support": max_support},
            row_offset=0 if rows is None else rows.start,
            total_rows=n,
            **hashes,
        )

    @classmethod
    def uniform(cls, num_categories: int, device: torch.device | str | None = None) -> PosteriorTable:
        """The "MAPA-naive" ablation: :math:`q(c_n = i) = 1/N` for every row.

        Stored as expanded views, so it costs ``O(N)`` memory whatever ``N``.
        """
        n = check_nonnegative_int(num_categories, "num_categories")
        if n < 1:
            raise ValueError("num_categories must be >= 1")
        idx = torch.arange(n, device=device).expand(n, n)
        lp = torch.full((1, 1), -math.log(n), device=device).expand(n, n)
        return cls(idx, lp, n, config={"kernel": "uniform"})

    @classmethod
    def from_log_probs(cls, log_probs: Tensor, max_support: int | None = None) -> PosteriorTable:
        """A table from an explicit ``(R, N)`` matrix of (unnormalized) log-probabilities.

        Rows are normalized here. Used for "MAPA-GT" (Eq. 7 under a known decoder).
        """
        if not isinstance(log_probs, Tensor) or log_probs.dim() != 2:
            raise ValueError("log_probs must be a (R, N) tensor of log-probabilities")
        if torch.isnan(log_probs).any() or (log_probs == math.inf).any():
            raise ValueError("log_probs contains NaN or +inf")
        lz = torch.logsumexp(log_probs, dim=1, keepdim=True)
        if not bool(torch.isfinite(lz).all()):
            raise ValueError("every row of log_probs needs at least one finite entry")
        n = log_probs.shape[1]
        m = n if max_support is None else check_max_support(max_support, n)
        lp = log_probs - lz
        if m == n:
            vals, idx = torch.sort(lp, dim=1, descending=True, stable=True)
        else:
            vals, idx = torch.topk(lp, m, dim=1)
        return cls(idx, vals, n, log_normalizer=lz.squeeze(1), config={"kernel": "explicit"})

    @classmethod
    def cached(
        cls,
        data: Tensor,
        kernel: ProximityKernel,
        cache_dir: str | os.PathLike,
        *,
        max_support: int | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ) -> PosteriorTable:
        """:meth:`from_data` through an on-disk cache keyed by data fingerprint and kernel settings.

        A hit is loaded (and verified), a miss is built and saved; several processes may
        share a cache directory (see :func:`~pyro_mapa.table.storage.cached_table`).
        """
        return cached_table(
            data,
            kernel,
            cache_dir,
            build=lambda: cls.from_data(
                data, kernel, max_support=max_support, chunk_size=chunk_size, device=device, progress=progress
            ),
            load=lambda path: cls.load(path, map_location=device),
            max_support=max_support,
        )

    # ------------------------------------------------------------------ queries
    @property
    def num_rows(self) -> int:
        return self.indices.shape[0]

    @property
    def support_size(self) -> int:
        """``M``, the number of entries kept per row."""
        return self.indices.shape[1]

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    def _rows(self, rows: Tensor | None) -> Tensor | slice:
        if rows is None:
            return slice(None)
        # Integer lists/arrays are converted; float, negative or out-of-range rows refused
        # (one host sync on an accelerator): a -1 must not alias the last row.
        rows = as_index_tensor(
            rows, self.num_rows, "batch_idx", device=self.indices.device,
            low=self.row_offset, one_dim=False,
        )
        return rows - self.row_offset if self.row_offset else rows

    def rows(self, rows: Tensor | None = None) -> TableRows:
        """The whole sorted support of the given rows."""
        r = self._rows(rows)
        return TableRows(self.indices[r], self.log_probs[r])

    def top_k(self, rows: Tensor | None, k: int) -> TableRows:
        """The ``k`` most probable indices of each row and their log-probabilities, ``(B, k)``."""
        k = check_nonnegative_int(k, "k (num_top)")
        self._check_k(k)
        r = self._rows(rows)
        return TableRows(self.indices[r, :k], self.log_probs[r, :k])

    def _check_k(self, k: int) -> None:
        if k > self.support_size:
            if self.support_size < self.num_categories:
                fix = f"rebuild the table with max_support >= {k} or lower num_top"
            else:
                fix = f"num_top can be at most N={self.num_categories}"
            raise ValueError(f"num_top={k} exceeds the table's support of {self.support_size}; {fix}")

    def log_suffix_mass(self) -> Tensor:
        """``(R, M)`` log of each row's mass from position ``j`` on: ``logsumexp(log_probs[:, j:])``.

        Built once and reused by every remainder draw. The uniform table keeps it as an
        expanded view.
        """
        if self._log_suffix is None:
            if self.config.get("kernel") == "uniform" and self.log_probs.stride(0) == 0:
                n = self.num_categories
                j = torch.arange(n, device=self.device, dtype=self.log_probs.dtype)
                self._log_suffix = (torch.log(n - j) - math.log(n)).expand(self.num_rows, n)
            else:
                self._log_suffix = log_suffix_mass(self.log_probs, default_chunk_size(self.support_size))
        return self._log_suffix

    def remainder_log_mass(self, k: int) -> Tensor:
        """``(R,)`` log of each row's probability mass outside its top ``k``."""
        self._check_k(k)
        if k == self.support_size:
            return self.log_probs.new_full((self.num_rows,), -math.inf)
        return self.log_suffix_mass()[:, k]

    def remainder(self, rows: Tensor | None, k: int) -> TableRows:
        """The remainder after the top ``k``: indices and the renormalized :math:`\\log\\tilde q`."""
        k = check_nonnegative_int(k, "k (num_top)")
        self._check_k(k)
        r = self._rows(rows)
        mass = self.remainder_log_mass(k)[r]
        return TableRows(self.indices[r, k:], remainder_log_probs(self.log_probs[r], k, mass))

    def sample_remainder(
        self,
        rows: Tensor | None,
        k: int,
        s: int,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
    ) -> TableRows:
        """Draws ``s`` indices per row from the remainder :math:`\\tilde q_n`, with replacement.

        See :func:`~pyro_mapa.table.sampling.sample_with_replacement`. ``uniforms``
        (``(B, s)`` in ``(0, 1]``, else ``ValueError``; e.g. from :func:`~pyro_mapa.table.counter_rng.counter_uniform`)
        replaces the random stream, making the draws a deterministic function of them.

        Returns:
            ``(indices, log_q_remainder)``, both ``(B, s)``; ``(B, 0)`` when ``s = 0``
            or when the top ``k`` already cover the row's support (nothing to sample).
        """
        s = check_nonnegative_int(s, "s (num_samples)")
        k = check_nonnegative_int(k, "k (num_top)")
        self._check_k(k)
        r = self._rows(rows)
        if isinstance(r, slice):
            r = torch.arange(self.num_rows, device=self.indices.device)
        b = r.shape[0]
        if s == 0 or k == self.support_size:
            return TableRows(self.indices.new_empty((b, 0)), self.log_probs.new_empty((b, 0)))
        dtype = self.log_probs.dtype
        uniforms = checked_uniforms(uniforms, (b, s), generator, self.device, dtype, include_one=True)
        idx, log_q = sample_with_replacement(self.indices, self.log_probs, self.log_suffix_mass(), r, k, s, uniforms)
        return TableRows(idx, log_q)

    def sample_remainder_without_replacement(
        self,
        rows: Tensor | None,
        k: int,
        s: int,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
    ) -> TableRows:
        """Draws ``s`` distinct remainder indices per row (Gumbel-top-k) with their log inclusion weights.

        See :func:`~pyro_mapa.table.sampling.sample_without_replacement` (an unbiased
        priority-sampling estimator; looser than sampling with replacement at ``s = 1``).
        ``uniforms`` (``(B, M - k)`` in ``[0, 1]``, else ``ValueError``) replaces the random stream if given.

        Returns:
            ``(indices, log_inclusion)``, both ``(B, min(s, M - k))``.
        """
        s = check_nonnegative_int(s, "s (num_samples)")
        rest = self.remainder(rows, k)
        b, width = rest.indices.shape
        if min(s, width) == 0:
            return TableRows(rest.indices.new_empty((b, 0)), rest.log_probs.new_empty((b, 0)))
        device, dtype = rest.log_probs.device, rest.log_probs.dtype
        u = checked_uniforms(uniforms, (b, width), generator, device, dtype, include_one=False, writable=True)
        idx, log_incl = sample_without_replacement(rest.indices, rest.log_probs, s, u)
        return TableRows(idx, log_incl)

    def check_data(self, data: Tensor) -> None:
        """Raises :class:`ValueError` if the table was built on other data than ``data``.

        See :func:`~pyro_mapa.table.data_check.check_table_data`: per-row hashes (values
        rounded to float32) when the table has them, else the exact data fingerprint.
        """
        check_table_data(self, data)

    def mismatched_rows(self, rows: Tensor, values: Tensor) -> Tensor | None:
        """The rows among ``rows`` whose observed ``values`` differ from the table's data.

        ``None`` if the table cannot tell; see :func:`~pyro_mapa.table.data_check.mismatched_rows`.
        """
        return mismatched_rows(self, rows, values)

    def to(self, device: torch.device | str) -> PosteriorTable:
        """A copy of the table on ``device`` (every tensor moves, ``log_normalizer_se`` included)."""
        lz = None if self.log_normalizer is None else self.log_normalizer.to(device)
        table = PosteriorTable(
            self.indices.to(device),
            self.log_probs.to(device),
            self.num_categories,
            lz,
            self.fingerprint,
            self.config,
            self.row_offset,
            self.total_rows,
            self.row_hashes,
            self.row_shape,
        )
        table.log_normalizer_se = None if self.log_normalizer_se is None else self.log_normalizer_se.to(device)
        return table

    def __repr__(self) -> str:
        return (
            f"PosteriorTable(rows={self.num_rows}, num_categories={self.num_categories}, "
            f"support={self.support_size}, config={self.config})"
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Writes the table atomically in the tensor-only, checksummed format of :mod:`~pyro_mapa.table.storage`."""
        save_table(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: torch.device | str | None = None
    ) -> PosteriorTable:
        """Reads a table written by :meth:`save`; a truncated or altered file raises ``ValueError``."""
        table = load_table(cls, path)
        return table.to(map_location) if map_location is not None else table
