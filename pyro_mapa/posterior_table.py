"""The MAPA posterior table: the categorical :math:`q(c_n = \\cdot)` of every row, built once.

.. math:: q(c_n = i) = \\kappa(x_n, x_i) / \\sum_j \\kappa(x_n, x_j)        (Eq. 8)

The table stores, for each row ``n``, its support sorted by decreasing probability:
``indices[n, :]`` (``M`` column indices) and ``log_probs[n, :]`` (their log
probabilities, normalized by the *exact* normalizer over all ``N`` columns). With
``M = N`` the table is exact and complete; with ``M < N`` (``max_support``) the tail
is dropped, which keeps the MAPA bound valid (METHOD.md §5, fact 8) at memory
``O(N·M)``. Sorted rows make ``top_k`` a slice and the remainder a contiguous block.

The numerics live in pure functions (:func:`build_table`, :func:`remainder_log_probs`)
that know nothing of Pyro and run on any device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._io import atomic_torch_save
from .kernels import ProximityKernel

__all__ = [
    "PosteriorTable",
    "TableRows",
    "build_table",
    "data_fingerprint",
    "remainder_log_probs",
]

FORMAT_NAME = "pyro_mapa.PosteriorTable"
FORMAT_VERSION = 1
# A dense (M = N) table holds N² int64 indices and float32 log-probabilities.
_DENSE_LIMIT_BYTES = 4 * 2**30


class TableRows(NamedTuple):
    """Sorted supports of a batch of rows: ``indices`` and ``log_probs``, both ``(B, M)``."""

    indices: Tensor
    log_probs: Tensor


def data_fingerprint(data: Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and values: identifies the data a table was built on."""
    h = hashlib.sha256()
    h.update(f"{tuple(data.shape)}|{data.dtype}".encode())
    h.update(data.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _default_chunk_size(num_columns: int) -> int:
    # 128 query rows per block (cache-friendly on CPU); fewer when a block would pass
    # 2^26 entries (256 MiB in float32), i.e. for N above about half a million.
    return max(1, min(num_columns, 128, 2**26 // max(num_columns, 1)))


def build_table(
    data: Tensor,
    kernel: ProximityKernel,
    max_support: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    rows: range | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Computes the sorted MAPA rows of ``data`` in row chunks, never holding ``N×N``.

    For each block of ``chunk_size`` query rows, in one preallocated ``(chunk, N)``
    buffer: squared distances to all ``N`` points by one matrix multiply
    (``addmm``, in place), then :math:`\\log\\kappa` in place, the ``M`` largest entries
    (``topk``), and the exact row log-normalizer over all ``N`` columns from the same
    buffer (``max + log Σ exp(· - max)``, the max being the top-1 value). Peak memory is
    ``O(N·M + chunk·N)``.

    Ties: with ``M = N`` a stable sort orders equal entries by column index. For kernels
    whose squared distances are integers (``kernel.integer_sqdist``, e.g. Hamming
    distances of binary data, exact in float32) ties are broken by column index for any
    ``M``, by ranking the exact integer key ``distance · N + column``.

    Arguments:
        data: ``(N, D)`` floating tensor on the device to compute on.
        kernel: The proximity kernel.
        max_support: ``M``, entries kept per row (default ``N``).
        chunk_size: Query rows per block (default 128, fewer for very large ``N``).
        progress: Show a tqdm bar (default: only for more than 10^8 entries).
        rows: Only these query rows (default: all ``N``).

    Returns:
        ``(indices, log_probs, log_normalizer)`` of shapes ``(R, M)``, ``(R, M)``, ``(R,)``.
    """
    n = data.shape[0]
    rows = range(n) if rows is None else rows
    r0, num = rows.start, len(rows)
    m = n if max_support is None else max_support
    chunk = min(n, chunk_size or _default_chunk_size(n))
    if progress is None:
        progress = n * n > 10**8
    device, dtype = data.device, data.dtype
    indices = torch.empty(num, m, dtype=torch.long, device=device)
    log_probs = torch.empty(num, m, dtype=dtype, device=device)
    log_norm = torch.empty(num, dtype=dtype, device=device)
    sq = (data * data).sum(-1)
    buf = torch.empty(min(chunk, num), n, dtype=dtype, device=device)
    integer = bool(getattr(kernel, "integer_sqdist", False)) and m < n
    cols = torch.arange(n, device=device) if integer else None
    for start in tqdm(range(0, num, chunk), desc="MAPA table", unit="block", disable=not progress):
        stop = min(start + chunk, num)
        b = buf[: stop - start]
        torch.addmm(sq.unsqueeze(0), data[r0 + start : r0 + stop], data.T, beta=1.0, alpha=-2.0, out=b)
        b.add_(sq[r0 + start : r0 + stop].unsqueeze(1)).clamp_(min=0.0)
        if integer:
            keys = b.round().to(torch.long).mul_(n).add_(cols)
            idx = torch.topk(keys, m, dim=1, largest=False, sorted=True).indices
        kernel.log_kernel_from_sqdist_(b)
        if integer:
            vals = b.gather(1, idx)
        elif m == n:
            vals, idx = torch.sort(b, dim=1, descending=True, stable=True)
        else:
            vals, idx = torch.topk(b, m, dim=1, largest=True, sorted=True)
        top = vals[:, :1]
        lz = (top + b.sub_(top).exp_().sum(1, keepdim=True).log_()).squeeze(1)
        indices[start:stop] = idx
        log_probs[start:stop] = vals - lz.unsqueeze(1)
        log_norm[start:stop] = lz
    return indices, log_probs, log_norm


def remainder_log_probs(log_probs: Tensor, k: int, log_mass: Tensor | None = None) -> Tensor:
    """Log-probabilities of the renormalized remainder :math:`\\tilde q_n` after the top ``k``.

    .. math:: \\tilde q_n(i) = q(c_n=i)[i \\notin T_K(n)] / \\sum_{j \\notin T_K(n)} q(c_n=j)

    A row whose remainder mass underflows to zero falls back to a uniform proposal
    over its remainder entries: any proposal with full support keeps the importance
    estimate unbiased (METHOD.md §5, fact 7), and nothing becomes NaN.

    Arguments:
        log_probs: ``(B, M)`` sorted log-probabilities of the kept support.
        k: Number of leading entries excluded.
        log_mass: Optional precomputed ``(B,)`` remainder log-masses
            ``logsumexp(log_probs[:, k:])``.

    Returns:
        ``(B, M - k)`` normalized log-probabilities.
    """
    rest = log_probs[:, k:]
    if log_mass is None:
        log_mass = torch.logsumexp(rest, dim=-1)
    log_mass = log_mass.unsqueeze(-1)
    uniform = torch.full_like(rest, -math.log(max(rest.shape[-1], 1)))
    return torch.where(torch.isfinite(log_mass), rest - log_mass, uniform)


def _log_inclusion(log_x: Tensor) -> Tensor:
    """:math:`\\log(1 - \\exp(-\\exp(\\log x)))`, stable for tiny and huge ``x`` (0 at ``+inf``)."""
    x = log_x.exp()
    small = log_x < -5.0
    # For x < e^-5: log(1 - e^-x) = log x + log1p(-x/2 + x²/6 - ...) ~ log x - x/2.
    approx = log_x - 0.5 * x
    exact = torch.log(-torch.expm1(-x.clamp(min=1e-30)))
    return torch.where(small, approx, exact)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class PosteriorTable:
    """The MAPA posterior :math:`q(c_n = \\cdot)` for every row, sorted, possibly truncated.

    Build it with :meth:`from_data` (the kernel approximation), :meth:`uniform`
    ("MAPA-naive") or :meth:`from_log_probs` (any given posterior, e.g. "MAPA-GT").

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

    Example:
        >>> X = torch.tensor([[0.0], [0.1], [1.0]])
        >>> table = PosteriorTable.from_data(X, GaussianKernel(0.1))
        >>> table.top_k(torch.tensor([0]), 1).indices
        tensor([[0]])
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
            data: ``(N, D)`` observations, finite floats.
            kernel: A :class:`~pyro_mapa.kernels.ProximityKernel`.
            max_support: Keep only each row's top ``M`` entries (memory ``O(N·M)``);
                the log-normalizer stays exact over all ``N``. Default: full rows.
            chunk_size: Query rows per block (memory ``O(chunk·N)``).
            device: Where to compute and keep the table (default: ``data.device``).
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
        if not isinstance(kernel, ProximityKernel):
            raise TypeError(f"kernel must be a ProximityKernel, got {type(kernel).__name__}")
        kernel.validate(data)
        n = data.shape[0]
        if n < 2:
            raise ValueError(
                f"data has {n} row; MAPA needs at least 2 observations (one code per observation)"
            )
        if max_support is not None:
            _check_count(max_support, "max_support")
            if not 1 <= max_support <= n:
                raise ValueError(f"max_support must lie in [1, N={n}], got {max_support}")
        elif n * n * 12 > _DENSE_LIMIT_BYTES:
            raise ValueError(
                f"a dense table for N={n} needs {n * n * 12 / 2**30:.1f} GiB; "
                "pass max_support=M (e.g. 256) to keep only each row's top M entries"
            )
        if chunk_size is not None:
            _check_count(chunk_size, "chunk_size")
            if chunk_size < 1:
                raise ValueError("chunk_size must be >= 1")
        if rows is not None and (not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start < rows.stop <= n):
            raise ValueError(f"rows must be a contiguous range inside [0, N={n}), got {rows!r}")
        if neighbors not in ("exact", "hnsw"):
            raise ValueError(f"neighbors must be 'exact' or 'hnsw', got {neighbors!r}")
        if normalizer not in ("exact", "sampled"):
            raise ValueError(f"normalizer must be 'exact' or 'sampled', got {normalizer!r}")
        fingerprint = data_fingerprint(data)
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
                                "normalizer": normalizer}, total_rows=n)
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
        )

    @classmethod
    def uniform(cls, num_categories: int, device: torch.device | str | None = None) -> PosteriorTable:
        """The "MAPA-naive" ablation: :math:`q(c_n = i) = 1/N` for every row.

        Stored as expanded views, so it costs ``O(N)`` memory whatever ``N``.
        """
        n = _check_count(num_categories, "num_categories")
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
        m = n if max_support is None else max_support
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

        The file name is a hash of the data fingerprint, the kernel's :meth:`config` and
        ``max_support``; a hit is loaded (and verified), a miss is built and saved.
        Safe for several processes at once: each writes a complete temporary file and
        renames it atomically, so a reader sees either no file or a whole one, and two
        writers of the same key write the same content. A damaged cache file is rebuilt.
        """
        fingerprint = data_fingerprint(data)
        key = json.dumps({"data": fingerprint, "kernel": kernel.config(), "max_support": max_support},
                         sort_keys=True)
        path = Path(cache_dir) / f"mapa-table-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"
        if path.exists():
            try:
                table = cls.load(path, map_location=device)
                if table.fingerprint == fingerprint:
                    return table
            except ValueError:
                pass  # damaged or stale: rebuild below
        table = cls.from_data(data, kernel, max_support=max_support, chunk_size=chunk_size,
                              device=device, progress=progress)
        table.save(path)
        return table

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
        rows = rows.to(self.indices.device)
        return rows - self.row_offset if self.row_offset else rows

    def rows(self, rows: Tensor | None = None) -> TableRows:
        """The whole sorted support of the given rows."""
        r = self._rows(rows)
        return TableRows(self.indices[r], self.log_probs[r])

    def top_k(self, rows: Tensor | None, k: int) -> TableRows:
        """The ``k`` most probable indices of each row and their log-probabilities, ``(B, k)``."""
        k = _check_count(k, "k (num_top)")
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

        Built once (in row chunks, summing from the small end so the tail keeps its
        relative precision) and reused by every remainder draw. The uniform table
        keeps it as an expanded view.
        """
        if self._log_suffix is None:
            if self.config.get("kernel") == "uniform" and self.log_probs.stride(0) == 0:
                n = self.num_categories
                j = torch.arange(n, device=self.device, dtype=self.log_probs.dtype)
                self._log_suffix = (torch.log(n - j) - math.log(n)).expand(self.num_rows, n)
            else:
                chunk = _default_chunk_size(self.support_size)
                self._log_suffix = torch.cat(
                    [
                        torch.logcumsumexp(self.log_probs[i : i + chunk].flip(1), dim=1).flip(1)
                        for i in range(0, self.num_rows, chunk)
                    ]
                )
        return self._log_suffix

    def remainder_log_mass(self, k: int) -> Tensor:
        """``(R,)`` log of each row's probability mass outside its top ``k``."""
        self._check_k(k)
        if k == self.support_size:
            return self.log_probs.new_full((self.num_rows,), -math.inf)
        return self.log_suffix_mass()[:, k]

    def remainder(self, rows: Tensor | None, k: int) -> TableRows:
        """The remainder after the top ``k``: indices and the renormalized :math:`\\log\\tilde q`."""
        k = _check_count(k, "k (num_top)")
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

        ``uniforms`` (``(B, s)`` in ``(0, 1)``, e.g. from :func:`~pyro_mapa.counter_rng.counter_uniform`)
        replaces the random stream, making the draws a deterministic function of them.

        Returns:
            ``(indices, log_q_remainder)``, both ``(B, s)``; ``(B, 0)`` when ``s = 0``
            or when the top ``k`` already cover the row's support (nothing to sample).
        """
        s = _check_count(s, "s (num_samples)")
        k = _check_count(k, "k (num_top)")
        self._check_k(k)
        r = self._rows(rows)
        if isinstance(r, slice):
            r = torch.arange(self.num_rows, device=self.indices.device)
        m = self.support_size
        b = r.shape[0]
        if s == 0 or k == m:
            empty = self.indices.new_empty((b, 0))
            return TableRows(empty, self.log_probs.new_empty((b, 0)))
        # Inverse-CDF sampling on the suffix masses: draw log u ~ log_suffix[k] + log U(0, 1]
        # and take the position j >= k with log_suffix[j+1] < log u <= log_suffix[j]; then
        # P(j) = q_j / mass_k exactly, in log space, at O(B·S·log M) per call.
        suffix = self.log_suffix_mass()[r]  # (B, M)
        mass = suffix[:, k : k + 1]
        if uniforms is None:
            uniform_u = 1.0 - torch.rand(b, s, generator=generator, device=self.device, dtype=suffix.dtype)
        else:
            if uniforms.shape != (b, s):
                raise ValueError(f"uniforms must have shape {(b, s)}, got {tuple(uniforms.shape)}")
            uniform_u = uniforms.to(device=self.device, dtype=suffix.dtype)
        target = -(mass + uniform_u.log())  # searchsorted needs increasing rows: use -log_suffix
        pos = torch.searchsorted(-suffix, target, right=True) - 1
        pos = pos.clamp_(min=k, max=m - 1)
        # A remainder whose mass underflowed to zero: a uniform proposal over it instead
        # (any full-support proposal keeps the estimate unbiased; METHOD.md §5, fact 7).
        # Decided per row on the device, without a host sync.
        dead = ~torch.isfinite(mass)
        upos = k + (uniform_u * (m - k)).long().clamp_(max=m - k - 1)
        pos = torch.where(dead, upos, pos)
        row = r.unsqueeze(1)
        log_q = torch.where(dead, torch.full_like(target, -math.log(m - k)), self.log_probs[row, pos] - mass)
        return TableRows(self.indices[row, pos], log_q)

    def sample_remainder_without_replacement(
        self,
        rows: Tensor | None,
        k: int,
        s: int,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
    ) -> TableRows:
        """Draws ``s`` distinct remainder indices per row (Gumbel-top-k) with their log inclusion weights.

        ``uniforms`` (``(B, M - k)`` in ``(0, 1)``) replaces the random stream if given.

        Perturb :math:`\\log \\tilde q_n(i) + G_i` (``G_i`` standard Gumbel), keep the ``s``
        largest, and let :math:`\\kappa` be the ``(s+1)``-th largest perturbed value. Then

        .. math:: \\hat R = \\sum_{i \\in \\text{top-}s} a_i / \\pi_i(\\kappa), \\qquad
                  \\pi_i(\\kappa) = 1 - \\exp(-\\exp(\\log \\tilde q_n(i) - \\kappa))

        is an unbiased estimate of :math:`\\sum_i a_i` over the remainder for any
        :math:`a_i \\ge 0` (the priority-sampling estimator of Kool, van Hoof and Welling,
        2019, "Stochastic beams and where to find them", §4.2). When ``s`` covers the
        whole remainder every :math:`\\pi_i = 1` and the sum is exact.

        Returns:
            ``(indices, log_inclusion)``, both ``(B, min(s, M - k))``: the drawn indices and
            :math:`\\log \\pi_i(\\kappa)` (the term's log-weight correction; ``+inf``, i.e.
            weight zero, for an entry outside the proposal's support).
        """
        s = _check_count(s, "s (num_samples)")
        rest = self.remainder(rows, k)
        b, width = rest.indices.shape
        take = min(s, width)
        if take == 0:
            empty = rest.indices.new_empty((b, 0))
            return TableRows(empty, rest.log_probs.new_empty((b, 0)))
        if uniforms is None:
            u = torch.rand(b, width, generator=generator, device=rest.log_probs.device, dtype=rest.log_probs.dtype)
        else:
            if uniforms.shape != (b, width):
                raise ValueError(f"uniforms must have shape {(b, width)}, got {tuple(uniforms.shape)}")
            u = uniforms.to(device=rest.log_probs.device, dtype=rest.log_probs.dtype).clone()
        gumbel = -torch.log(-torch.log(u.clamp_(min=torch.finfo(u.dtype).tiny)))
        perturbed = rest.log_probs + gumbel
        if take < width:
            vals, pos = torch.topk(perturbed, take + 1, dim=1)
            kappa, pos = vals[:, take : take + 1], pos[:, :take]
        else:
            pos = torch.arange(width, device=perturbed.device).expand(b, width)
            kappa = torch.full((b, 1), -math.inf, device=perturbed.device, dtype=perturbed.dtype)
        log_q = rest.log_probs.gather(1, pos)
        log_incl = _log_inclusion(log_q - kappa)
        log_incl = torch.where(torch.isfinite(log_q), log_incl, torch.full_like(log_incl, math.inf))
        return TableRows(rest.indices.gather(1, pos), log_incl)

    def check_data(self, data: Tensor) -> None:
        """Raises :class:`ValueError` if the table was built on other data than ``data``."""
        if self.fingerprint is None:
            return
        if data_fingerprint(data) != self.fingerprint:
            raise ValueError(
                "the PosteriorTable was built on different data (fingerprint mismatch); "
                "rebuild it with PosteriorTable.from_data(data, kernel)"
            )

    def to(self, device: torch.device | str) -> PosteriorTable:
        """A copy of the table on ``device``."""
        lz = None if self.log_normalizer is None else self.log_normalizer.to(device)
        return PosteriorTable(
            self.indices.to(device),
            self.log_probs.to(device),
            self.num_categories,
            lz,
            self.fingerprint,
            self.config,
            self.row_offset,
            self.total_rows,
        )

    def __repr__(self) -> str:
        return (
            f"PosteriorTable(rows={self.num_rows}, num_categories={self.num_categories}, "
            f"support={self.support_size}, config={self.config})"
        )

    # ------------------------------------------------------------------ files
    def _payload_tensors(self) -> dict[str, Tensor]:
        out = {
            "indices": self.indices.detach().cpu().contiguous(),
            "log_probs": self.log_probs.detach().cpu().contiguous(),
        }
        if self.log_normalizer is not None:
            out["log_normalizer"] = self.log_normalizer.detach().cpu().contiguous()
        return out

    @staticmethod
    def _checksum(tensors: dict[str, Tensor]) -> str:
        h = hashlib.sha256()
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table atomically (temporary file, then rename) in a tensor-only format.

        The file holds a format version, the kernel settings, the data fingerprint
        and a checksum of the tensors; :meth:`load` reads it with
        ``torch.load(weights_only=True)``, so no code is ever unpickled.
        """
        tensors = self._payload_tensors()
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_categories": self.num_categories,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "row_offset": self.row_offset,
            "total_rows": self.total_rows,
            "checksum": self._checksum(tensors),
        }
        atomic_torch_save({"meta": json.dumps(meta), **tensors}, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: torch.device | str | None = None
    ) -> PosteriorTable:
        """Reads a table written by :meth:`save`; a truncated or altered file raises ``ValueError``."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
        except FileNotFoundError:
            raise
        except Exception as e:  # torch raises several types for damaged files
            raise ValueError(f"could not read a PosteriorTable from {path!s}: {e}") from e
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{path!s} is not a pyro_mapa PosteriorTable file")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path!s} has table format version {meta.get('version')}, this pyro_mapa reads "
                f"version {FORMAT_VERSION}; rebuild the table with PosteriorTable.from_data"
            )
        tensors = {k: v for k, v in payload.items() if k != "meta"}
        if cls._checksum(tensors) != meta.get("checksum"):
            raise ValueError(f"{path!s} is damaged or was altered (checksum mismatch); rebuild it")
        table = cls(
            tensors["indices"],
            tensors["log_probs"],
            meta["num_categories"],
            tensors.get("log_normalizer"),
            meta.get("fingerprint"),
            meta.get("config"),
            meta.get("row_offset", 0),
            meta.get("total_rows"),
        )
        return table.to(map_location) if map_location is not None else table
