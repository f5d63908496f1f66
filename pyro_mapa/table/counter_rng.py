"""Counter-based uniform random numbers: a pure function of (seed, step, data row, slot).

Remainder draws made from these depend only on *which* data point is drawn for at
which step, not on which process or in which batch order: the same point gets the same
draws whether the minibatch is processed by one process or split across many. This is
what makes data-parallel MAPA training reproduce single-process training exactly
(:mod:`pyro_mapa.training.distributed`).

The mixing function is SplitMix64 (Steele, Lea and Flood, 2014) on wrapping int64
arithmetic, with logical shifts emulated by masking; it runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["counter_uniform"]

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 values (``>>`` on a tensor is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def counter_uniform(seed: int, step: int, rows: Tensor, width: int, dtype=torch.float64) -> Tensor:
    """Uniforms in ``(0, 1)`` of shape ``(len(rows), width)``, a pure function of their coordinates.

    Arguments:
        seed: The stream.
        step: The gradient step (or any counter).
        rows: ``(B,)`` integer data-row indices.
        width: Slots per row.
    """
    base = _mix(_mix(torch.tensor(_signed(seed), dtype=torch.long)) ^ _signed(step))
    row_keys = _mix(base ^ _mix(rows.to(torch.long)))  # (B,)
    slots = torch.arange(width, device=rows.device, dtype=torch.long)
    z = _mix(row_keys.to(rows.device).unsqueeze(1) ^ _mix(slots).unsqueeze(0))
    return ((_shr(z, 11).to(torch.float64) + 0.5) / float(1 << 53)).to(dtype)
