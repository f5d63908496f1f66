"""Approximate nearest neighbours (faiss HNSW) and the row log-normalizer, for very large tables.

The exact table (:func:`~pyro_mapa.table.posterior_table.build_table`) costs ``O(N²·D)``. With
``neighbors="hnsw"`` the top-``M`` candidates of each row come from a faiss HNSW graph
(``O(N log N)``), their kernel values are computed exactly, and the row normalizer
:math:`Z_n = \\sum_j \\kappa(x_n, x_j)` is either

- ``"exact"``: one more ``O(N²)`` pass that only accumulates ``logsumexp`` (the table is
  then exact up to the neighbours HNSW missed), or
- ``"sampled"``: the top-``M`` sum plus an unbiased estimate of the tail from ``R``
  uniformly drawn columns, :math:`\\hat T_n = \\tfrac{N}{R}\\sum_r \\kappa(x_n, x_{j_r})
  [j_r \\notin T_M(n)]`, in ``O(N·R·D)``. Its error is reported per row as the
  delta-method standard error of :math:`\\log \\hat Z_n` (``log_normalizer_se``).

Distances come from a :class:`~pyro_mapa.table.distances.DistancePlan` (centred, scaled data;
error-bounded arithmetic; own entries exactly zero), as in the exact builder, and HNSW
searches the centred, scaled data, so data far from the origin or at any scale is safe.

faiss is optional: ``pip install faiss-cpu``.

References:
    | Efficient and robust approximate nearest neighbor search using Hierarchical
    | Navigable Small World graphs (Malkov and Yashunin, 2018) https://arxiv.org/abs/1603.09320
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .build import check_finished_table
from .distances import DistancePlan, table_dtype
from .kernels import ProximityKernel

__all__ = ["approximate_table_rows", "exact_log_normalizer", "hnsw_neighbors", "sampled_log_normalizer"]


def _plan(data: Tensor | DistancePlan, kernel: ProximityKernel) -> DistancePlan:
    return data if isinstance(data, DistancePlan) else DistancePlan(data, kernel)


def hnsw_neighbors(data: Tensor, m: int, *, hnsw_m: int = 32, ef_construction: int = 200,
                   ef_search: int | None = None) -> Tensor:
    """``(N, m)`` approximate nearest-neighbour indices (squared Euclidean) from a faiss HNSW graph."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("neighbors='hnsw' needs faiss: pip install faiss-cpu") from e
    x = np.ascontiguousarray(data.detach().to("cpu", torch.float32).numpy())
    index = faiss.IndexHNSWFlat(x.shape[1], hnsw_m)
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    index.hnsw.efSearch = max(ef_search or 2 * m, m)
    _, idx = index.search(x, m)
    return torch.from_numpy(idx.astype(np.int64))


def _row_log_kernel(plan: DistancePlan, kernel: ProximityKernel, rows: Tensor, cols: Tensor) -> Tensor:
    """``log κ(x_rows[n], x_cols[n, j])`` for ``cols`` of shape ``(n, k)``, from direct differences."""
    return kernel.log_kernel_from_scaled_sqdist_(plan.pair_scaled_sqdist(rows, cols))


def exact_log_normalizer(data: Tensor | DistancePlan, kernel: ProximityKernel, chunk_size: int = 128) -> Tensor:
    """``(N,)`` exact :math:`\\log Z_n` by one chunked ``O(N²)`` pass (no top-k), in the plan's dtype.

    ``data`` is the ``(N, D)`` data or a :class:`~pyro_mapa.table.distances.DistancePlan` of them.
    """
    plan = _plan(data, kernel)
    n = plan.num_rows
    out = torch.empty(n, dtype=plan.dtype, device=plan.unit.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        log_k = kernel.log_kernel_from_scaled_sqdist_(plan.scaled_sqdist(start, stop))
        out[start:stop] = torch.logsumexp(log_k, dim=1)
    return out


def sampled_log_normalizer(data: Tensor | DistancePlan, kernel: ProximityKernel, top_indices: Tensor, top_log_k: Tensor,
                           num_samples: int = 1024, seed: int = 0, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Unbiased-tail estimate of :math:`\\log Z_n` and its delta-method standard error, ``(N,)`` each.

    ``Ẑ_n = Σ_{top-M} κ + (N/R) Σ_r κ(x_n, x_{j_r}) [j_r ∉ top-M(n)]`` with ``R = num_samples``
    columns drawn uniformly (shared by all rows, so the tail is one matrix multiply).
    ``data`` is the ``(N, D)`` data or a :class:`~pyro_mapa.table.distances.DistancePlan` of them.
    """
    plan = _plan(data, kernel)
    n, device = plan.num_rows, plan.unit.device
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(n, (num_samples,), generator=g).to(device)
    log_top = torch.logsumexp(top_log_k.to(plan.dtype), dim=1)
    log_z = torch.empty(n, dtype=plan.dtype, device=device)
    se = torch.empty(n, dtype=plan.dtype, device=device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        log_k = kernel.log_kernel_from_scaled_sqdist_(plan.scaled_sqdist(start, stop, cols=cols))
        in_top = (top_indices[start:stop].unsqueeze(1) == cols.view(1, -1, 1)).any(-1)  # (b, R)
        log_k = log_k.masked_fill(in_top, -math.inf)
        # Tail estimate T̂ = (N/R) Σ κ, its standard error (N/√R)·sd(κ), all in log space.
        log_mean = torch.logsumexp(log_k, dim=1) - math.log(num_samples)
        log_t = log_mean + math.log(n)
        mean_sq = torch.logsumexp(2 * log_k, dim=1) - math.log(num_samples)
        var = (mean_sq.exp() - (2 * log_mean).exp()).clamp(min=0) * num_samples / max(num_samples - 1, 1)
        lz = torch.logaddexp(log_top[start:stop], log_t)
        log_z[start:stop] = lz
        se[start:stop] = n * var.sqrt() / math.sqrt(num_samples) / lz.exp().clamp(min=torch.finfo(lz.dtype).tiny)
    return log_z, se


def approximate_table_rows(data: Tensor, kernel: ProximityKernel, m: int, normalizer: str = "exact",
                           num_normalizer_samples: int = 1024, seed: int = 0,
                           **hnsw_kwargs) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Sorted ``(indices, log_probs, log_normalizer, log_normalizer_se)`` from HNSW neighbours.

    HNSW searches the centred, scaled data of the distance plan (the neighbour order does not
    change under a shift and a common scale); the kept entries' kernel values come from direct
    differences and the normalizer from the plan, as in the exact builder. The result is in the
    data's dtype (float32 for half precision); a NaN in it is a ``ValueError``.
    """
    plan = DistancePlan(data, kernel)
    idx = hnsw_neighbors(plan.unit, m, **hnsw_kwargs).to(data.device)
    missing = idx < 0  # faiss pads with -1 when it finds fewer than m
    if bool(missing.any()):
        raise RuntimeError("HNSW returned fewer than max_support neighbours for some rows; raise ef_search")
    rows = torch.arange(data.shape[0], device=data.device)
    log_k = torch.cat([_row_log_kernel(plan, kernel, rows[s : s + 4096], idx[s : s + 4096])
                       for s in range(0, len(rows), 4096)])
    # Sort by kernel value, ties by column index (stable sort after ordering columns).
    order = torch.argsort(idx, dim=1)
    idx, log_k = idx.gather(1, order), log_k.gather(1, order)
    vals, pos = torch.sort(log_k, dim=1, descending=True, stable=True)
    idx = idx.gather(1, pos)
    if normalizer == "exact":
        lz, se = exact_log_normalizer(plan, kernel), None
    elif normalizer == "sampled":
        lz, se = sampled_log_normalizer(plan, kernel, idx, vals, num_normalizer_samples, seed)
    else:
        raise ValueError(f"normalizer must be 'exact' or 'sampled', got {normalizer!r}")
    out = table_dtype(data.dtype)
    log_probs = (vals.to(plan.dtype) - lz.unsqueeze(1)).to(out)
    check_finished_table(log_probs, kernel)
    return idx, log_probs, lz.to(out), None if se is None else se.to(out)
