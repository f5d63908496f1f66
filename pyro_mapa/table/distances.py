"""Squared distances for the table builders: centred, scaled, and as precise as the table needs.

The fast way to get a block of squared distances is one matrix multiply,
``||a||² + ||b||² - 2 a·b``. Its rounding error is absolute, about ``eps·(||a||² + ||b||²)``:
for data far from the origin (``[40.7, -74.0] + 0.01·randn`` in float32) the terms cancel and
the distances, hence the table, are garbage. :class:`DistancePlan` makes the step safe:

1. **Centre** the data at its mean (in float64) and divide by the largest absolute centred
   coordinate (the *span*): the unit data lie in ``[-1, 1]``, so nothing over- or underflows
   whatever the data's scale (``1e-30`` or ``1e20``).
2. The distance in the kernel's units, :math:`s = \\|x_a - x_b\\|^2 / \\ell^2` with
   :math:`\\ell` the kernel's :attr:`~pyro_mapa.ProximityKernel.length_scale` (the bandwidth),
   is the unit distance times ``factor = (span / ℓ)²``; ``factor`` may be ``inf`` (a zero
   distance then stays exactly zero, any other one is ``inf``, i.e. :math:`\\kappa = 0`).
3. **Choose the arithmetic** from an error bound: the multiply's error in
   :math:`\\log\\kappa` is at most about ``4·eps·max||u||²·factor·slope`` nats (``slope`` =
   :meth:`~pyro_mapa.ProximityKernel.scaled_sqdist_slope`). The multiply runs in the data's
   float32 when that bound is at most :data:`TOLERANCE`, else in float64 when *its* bound is;
   otherwise distances are computed directly as ``Σ (a - b)²`` in float64 (slower, in blocks,
   but accurate to a few ulps whatever the data).
4. Every point's distance to itself is set to exactly zero.

Kernels whose squared distances are integers (``integer_sqdist``: Hamming distances of 0/1
data) skip the centring and keep the multiply in the data's dtype, which is exact for them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import ProximityKernel

__all__ = ["TOLERANCE", "DistancePlan", "table_dtype"]

#: Largest error (nats) in log κ that the distance step may make: the bound that picks its arithmetic.
TOLERANCE = 1e-3

# Elements of one (rows, columns, D) block of the direct path (32 MiB of float64).
_DIRECT_BLOCK = 2**22


def table_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a table built on data of ``dtype``: the data's, or float32 for half precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _row_chunks(n: int, d: int) -> range:
    return range(0, n, max(1, _DIRECT_BLOCK // max(d, 1)))


class DistancePlan:
    """Centred, scaled data and the arithmetic chosen for their squared distances (see the module).

    Arguments:
        data: ``(N, D)`` finite floating data.
        kernel: The kernel (its ``length_scale``, ``scaled_sqdist_slope`` and ``integer_sqdist``).
        tolerance: The error bound (nats of log κ) the matrix-multiply path must meet.

    Attributes:
        unit: ``(N, D)`` centred data divided by the span, in the compute dtype.
        factor: ``(span / length_scale)²``: unit squared distances times this are in kernel units.
        dtype: The compute dtype (float32 or float64).
        direct: True when distances are ``Σ (a - b)²`` rather than a matrix multiply.
        error_bound: The estimated largest error of log κ on the chosen path (nats).
    """

    def __init__(self, data: Tensor, kernel: ProximityKernel, tolerance: float = TOLERANCE) -> None:
        x = data.detach()
        n, d = x.shape
        integer = bool(getattr(kernel, "integer_sqdist", False))
        chunks = _row_chunks(n, d)
        if integer:
            centre = torch.zeros(d, dtype=torch.float64, device=x.device)
            span = 1.0
        else:
            centre = sum(x[i : i + chunks.step].to(torch.float64).sum(0) for i in chunks) / n
            span = max(float((x[i : i + chunks.step].to(torch.float64) - centre).abs().max()) for i in chunks)
        if span == 0.0:  # every row equal: all distances are zero
            span = 1.0
        ratio = span / kernel.length_scale
        self.factor = ratio * ratio  # a Python float overflows to inf, never raises
        slope = float(kernel.scaled_sqdist_slope())
        max_sq = max(float(((x[i : i + chunks.step].to(torch.float64) - centre) / span).pow(2).sum(1).max())
                     for i in chunks)

        def bound(dtype: torch.dtype) -> float:
            if max_sq == 0.0 or slope == 0.0 or self.factor == 0.0:
                return 0.0  # nothing can err (and 0 · inf is no error)
            return 4.0 * torch.finfo(dtype).eps * max_sq * slope * self.factor

        own = table_dtype(x.dtype)
        self.direct = False
        if integer or bound(own) <= tolerance:
            self.dtype = own
        elif bound(torch.float64) <= tolerance:
            self.dtype = torch.float64
        else:
            self.dtype, self.direct = torch.float64, True
        self.error_bound = 0.0 if integer else (bound(self.dtype) if not self.direct else 0.0)
        self.unit = torch.cat([((x[i : i + chunks.step].to(torch.float64) - centre) / span).to(self.dtype)
                               for i in chunks])
        self.sq = None if self.direct else (self.unit * self.unit).sum(-1)
        self._overflow = self.factor > torch.finfo(self.dtype).max

    @property
    def num_rows(self) -> int:
        return self.unit.shape[0]

    def scaled_sqdist(self, start: int, stop: int, out: Tensor | None = None, cols: Tensor | None = None) -> Tensor:
        """``(stop - start, C)`` squared distances in kernel units, ``||x_a - x_b||² / ℓ²``.

        Arguments:
            start, stop: The rows ``a`` (data rows).
            out: Optional contiguous buffer of the result's shape and the plan's dtype.
            cols: Optional ``(C,)`` column rows ``b`` (default: all ``N``).

        Own entries (``a = b``) are exactly zero.
        """
        a = self.unit[start:stop]
        y = self.unit if cols is None else self.unit[cols]
        if out is None:
            out = torch.empty(a.shape[0], y.shape[0], dtype=self.dtype, device=a.device)
        if self.direct:
            d = max(a.shape[1], 1)
            cstep = max(1, min(y.shape[0], _DIRECT_BLOCK // d))
            rstep = max(1, _DIRECT_BLOCK // (cstep * d))
            for i in range(0, a.shape[0], rstep):
                for j in range(0, y.shape[0], cstep):
                    diff = a[i : i + rstep].unsqueeze(1) - y[j : j + cstep].unsqueeze(0)
                    out[i : i + rstep, j : j + cstep] = diff.mul_(diff).sum(-1)
        else:
            y_sq = self.sq if cols is None else self.sq[cols]
            torch.addmm(y_sq.unsqueeze(0), a, y.T, beta=1.0, alpha=-2.0, out=out)
            out.add_(self.sq[start:stop].unsqueeze(1)).clamp_(min=0.0)
        if cols is None:
            out.diagonal(start).zero_()
        else:
            rows = torch.arange(start, stop, device=out.device).unsqueeze(1)
            out.masked_fill_(cols.to(out.device).unsqueeze(0) == rows, 0.0)
        if self.factor != 1.0:
            out.mul_(self.factor)
            if self._overflow:  # factor is inf in this dtype: 0 · inf is a zero distance
                out.nan_to_num_(nan=0.0, posinf=math.inf)
        return out

    def pair_scaled_sqdist(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``(R, K)`` squared distances in kernel units between ``rows[r]`` and ``cols[r, k]``, directly."""
        diff = self.unit[rows].unsqueeze(1) - self.unit[cols]
        out = diff.mul_(diff).sum(-1).mul_(self.factor)
        return out.nan_to_num_(nan=0.0, posinf=math.inf) if self._overflow else out
