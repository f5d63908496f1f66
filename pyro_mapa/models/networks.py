"""Networks: the small MLP used by every method on the synthetic benchmarks."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (50, 50),
    activation: type[nn.Module] = nn.LeakyReLU,
) -> nn.Sequential:
    """A fully connected network ``in_dim -> hidden... -> out_dim`` with ``activation`` between layers.

    The default (two hidden layers of 50 units, LeakyReLU) is the small network used
    for the synthetic benchmarks.
    """
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
