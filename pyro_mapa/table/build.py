"""Building the MAPA table: exact row-blocked kernel rows, sorted, with the exact normalizer.

.. math:: q(c_n = i) = \\kappa(x_n, x_i) / \\sum_j \\kappa(x_n, x_j)        (Eq. 8)

Pure tensor functions that know nothing of Pyro and run on any device. Squared distances
come from :class:`~pyro_mapa.table.distances.DistancePlan` (centred, scaled, error-bounded);
the approximate-neighbour backend is :mod:`pyro_mapa.table.neighbors`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import as_data_tensor, check_nonnegative_int
from .distances import DistancePlan, table_dtype
from .kernels import ProximityKernel

__all__ = [
    "DENSE_LIMIT_BYTES",
    "build_table",
    "check_build_arguments",
    "check_finished_table",
    "check_max_support",
    "data_fingerprint",
    "default_chunk_size",
    "row_hashes",
]

# A dense (M = N) table holds N² int64 indices and float32 log-probabilities.
DENSE_LIMIT_BYTES = 4 * 2**30


def data_fingerprint(data: Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and values: identifies the data a table was built on."""
    h = hashlib.sha256()
    h.update(f"{tuple(data.shape)}|{data.dtype}".encode())
    # The raw bytes (a uint8 view: the same bytes NumPy would give, and any dtype works, bfloat16 too).
    h.update(data.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def row_hashes(data: Tensor) -> Tensor:
    """``(N,)`` int64: a 64-bit BLAKE2b hash of each row's values, rounded to float32.

    Rows are flattened and rounded to float32 first, so the float32 and float64 versions
    of the same data hash alike (and ``-0.0`` like ``0.0``); two different rows share a
    hash with probability about :math:`2^{-64}`. One pass over the data on the CPU
    (about 1 s per 10^5 rows of 64 numbers). Used by :class:`~pyro_mapa.PosteriorTable`
    to tell whether the rows a model observes are the rows its table was built on.
    """
    flat = data.detach().reshape(data.shape[0], math.prod(data.shape[1:]))
    x = (flat.to("cpu", torch.float32) + 0.0).contiguous()  # -0.0 + 0.0 = +0.0
    rows = x.numpy().view(np.uint8).reshape(x.shape[0], 4 * x.shape[1])
    digests = (hashlib.blake2b(memoryview(r), digest_size=8).digest() for r in rows)
    return torch.from_numpy(np.fromiter((int.from_bytes(d, "little", signed=True) for d in digests),
                                        dtype=np.int64, count=x.shape[0]))


def default_chunk_size(num_columns: int, itemsize: int = 4) -> int:
    # 128 query rows per block (cache-friendly on CPU); fewer when a block would pass
    # 256 MiB (2^26 float32 entries), i.e. for N above about half a million.
    return max(1, min(num_columns, 128, 2**28 // (itemsize * max(num_columns, 1))))


def build_table(
    data: Tensor,
    kernel: ProximityKernel,
    max_support: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    rows: range | None = None,
    plan: DistancePlan | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Computes the sorted MAPA rows of ``data`` in row chunks, never holding ``N×N``.

    For each block of ``chunk_size`` query rows, in one preallocated ``(chunk, N)``
    buffer: squared distances to all ``N`` points in the kernel's units
    (:meth:`DistancePlan.scaled_sqdist`: centred and scaled data, a matrix multiply whose
    error is bounded, own entries exactly zero), then :math:`\\log\\kappa` in place, the
    ``M`` largest entries (``topk``), and the exact row log-normalizer over all ``N``
    columns from the same buffer (``max + log Σ exp(· - max)``, the max being the top-1
    value). Peak memory is ``O(N·M + chunk·N)``.

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
        plan: A :class:`~pyro_mapa.table.distances.DistancePlan` of ``data`` and
            ``kernel`` (default: made here).

    Returns:
        ``(indices, log_probs, log_normalizer)`` of shapes ``(R, M)``, ``(R, M)``, ``(R,)``,
        the last two in the data's dtype (float32 for half-precision data).
    """
    n = data.shape[0]
    rows = range(n) if rows is None else rows
    r0, num = rows.start, len(rows)
    m = n if max_support is None else max_support
    plan = DistancePlan(data, kernel) if plan is None else plan
    work = plan.dtype
    chunk = min(n, chunk_size or default_chunk_size(n, torch.finfo(work).bits // 8))
    if progress is None:
        progress = n * n > 10**8
    device, dtype = data.device, table_dtype(data.dtype)
    indices = torch.empty(num, m, dtype=torch.long, device=device)
    log_probs = torch.empty(num, m, dtype=dtype, device=device)
    log_norm = torch.empty(num, dtype=dtype, device=device)
    buf = torch.empty(min(chunk, num), n, dtype=work, device=device)
    integer = bool(getattr(kernel, "integer_sqdist", False)) and m < n
    cols = torch.arange(n, device=device) if integer else None
    for start in tqdm(range(0, num, chunk), desc="MAPA table", unit="block", disable=not progress):
        stop = min(start + chunk, num)
        b = plan.scaled_sqdist(r0 + start, r0 + stop, out=buf[: stop - start])
        if integer:
            keys = b.round().to(torch.long).mul_(n).add_(cols)
            idx = torch.topk(keys, m, dim=1, largest=False, sorted=True).indices
        kernel.log_kernel_from_scaled_sqdist_(b)
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
    check_finished_table(log_probs, kernel, r0)
    return indices, log_probs, log_norm


def check_finished_table(log_probs: Tensor, kernel: ProximityKernel | str, rows_offset: int = 0) -> None:
    """Raises ``ValueError`` if a finished table holds NaN (one host sync).

    Arguments:
        log_probs: ``(R, M)`` the table's log-probabilities.
        kernel: The kernel (or a description), named in the message.
        rows_offset: Data row of the first table row.
    """
    bad = torch.isnan(log_probs).any(1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0]) + rows_offset
        raise ValueError(
            f"the table has NaN log-probabilities in {int(bad.sum())} row(s) (first: row {first}) under "
            f"{kernel!r}: its log-kernel gives NaN or +inf for some distances, or no finite value for a "
            "whole row; check the kernel (its bandwidth and formula) and the data's scale"
        )


def check_build_arguments(
    data: Any,
    kernel: ProximityKernel,
    max_support: int | None,
    chunk_size: int | None,
    rows: range | None,
    neighbors: str,
    normalizer: str,
    device: Any = None,
) -> Tensor:
    """Validates the arguments of :meth:`~pyro_mapa.PosteriorTable.from_data`; returns ``data`` as a tensor."""
    if not isinstance(kernel, ProximityKernel):
        raise TypeError(f"kernel must be a ProximityKernel, got {type(kernel).__name__}")
    if not isinstance(data, Tensor):
        data = as_data_tensor(data, "data")  # a NumPy array is converted; anything else refused
    kernel.validate(data)
    n = data.shape[0]
    if n < 2:
        raise ValueError(f"data has {n} row; MAPA needs at least 2 observations (one code per observation)")
    if max_support is not None:
        check_max_support(max_support, n)
    elif n * n * 12 > DENSE_LIMIT_BYTES:
        raise ValueError(
            f"a dense table for N={n} needs {n * n * 12 / 2**30:.1f} GiB; "
            "pass max_support=M (e.g. 256) to keep only each row's top M entries"
        )
    if chunk_size is not None and check_nonnegative_int(chunk_size, "chunk_size") < 1:
        raise ValueError("chunk_size must be >= 1")
    if rows is not None and (not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start < rows.stop <= n):
        raise ValueError(f"rows must be a contiguous range inside [0, N={n}), got {rows!r}")
    if neighbors not in ("exact", "hnsw"):
        raise ValueError(f"neighbors must be 'exact' or 'hnsw', got {neighbors!r}")
    if normalizer not in ("exact", "sampled"):
        raise ValueError(f"normalizer must be 'exact' or 'sampled', got {normalizer!r}")
    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError, ValueError) as e:
            raise ValueError(f"device must be a torch.device or a name such as 'cpu' or 'cuda', got {device!r}") from e
        if kind == "meta":
            raise ValueError(
                "device='meta' holds shapes but no values, so a table built there could not be queried; "
                "pass device='cpu' or 'cuda' (or leave device=None to use the data's device)"
            )
    return data


def check_max_support(max_support: Any, n: int) -> int:
    """``max_support`` if it is an int in ``[1, N]``; raises ``TypeError``/``ValueError`` naming it otherwise."""
    check_nonnegative_int(max_support, "max_support")
    if not 1 <= max_support <= n:
        raise ValueError(
            f"max_support must lie in [1, N={n}], got {max_support}; pass max_support=None for full rows"
        )
    return max_support
