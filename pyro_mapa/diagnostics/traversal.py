"""Latent traversal: decode prior quantiles of one latent at a time (a collapse and identifiability picture)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.distributions import Normal

from ..errors import check_positive_int
from ..models.likelihoods import Likelihood

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["latent_traversal_figure"]


@torch.no_grad()
def latent_traversal_figure(
    decode: Callable[[Tensor], Tensor],
    latent_dim: int,
    *,
    likelihood: Likelihood | None = None,
    num_steps: int = 9,
    quantiles: tuple[float, float] = (0.05, 0.95),
    data: Tensor | None = None,
    max_outputs: int = 6,
) -> Figure:
    """Decodes prior quantiles :math:`\\Phi^{-1}(q_k)` of one latent at a time, the others at 0 (the prior median).

    With 2-D observations one panel shows each latent's path of decoded means in the data
    plane (over ``data`` in grey); otherwise one panel per output dimension (at most
    ``max_outputs``) plots the decoded mean against the latent value. A latent whose path
    does not move is unused by the decoder.

    Arguments:
        decode: Maps ``(num_steps, d)`` standard-normal latents to likelihood parameters.
        latent_dim: ``d``.
        likelihood: If given, ``likelihood(params).mean`` is plotted (e.g. probabilities for a
            Bernoulli likelihood), else the parameters themselves.
        num_steps: Quantiles per latent, evenly spaced in probability.
        quantiles: The lowest and highest probability, inside ``(0, 1)``.
        data: Optional ``(n, 2)`` observations drawn behind the paths.
        max_outputs: Most output panels when ``D > 2``.

    Returns a :class:`matplotlib.figure.Figure` (no pyplot state; save it with ``fig.savefig``).
    """
    d = check_positive_int(latent_dim, "latent_dim")
    steps = check_positive_int(num_steps, "num_steps")
    lo, hi = quantiles
    if not 0 < lo < hi < 1:
        raise ValueError(f"quantiles must satisfy 0 < low < high < 1, got {quantiles}")
    values = Normal(0.0, 1.0).icdf(torch.linspace(lo, hi, steps, dtype=torch.float64))
    paths = []
    for j in range(d):
        z = torch.zeros(steps, d, dtype=torch.get_default_dtype())
        z[:, j] = values.to(z.dtype)
        means = decode(z) if likelihood is None else likelihood(decode(z)).mean
        paths.append(means.reshape(steps, -1).double().cpu())
    out_dim = paths[0].shape[1]
    from matplotlib.figure import Figure  # imported here: `import pyro_mapa` stays free of matplotlib

    fig = Figure(figsize=(4.0, 3.6) if out_dim == 2 else (3.2 * min(out_dim, max_outputs), 3.0), layout="constrained")
    if out_dim == 2:
        ax = fig.add_subplot()
        if data is not None:
            ax.scatter(*data.detach().double().cpu().T[:2], s=3, c="0.8", label="data")
        for j, path in enumerate(paths):
            ax.plot(path[:, 0], path[:, 1], "o-", ms=3, label=f"$z_{{{j + 1}}}$")
        ax.set_xlabel("decoded mean $x_1$")
        ax.set_ylabel("decoded mean $x_2$")
    else:
        for k in range(min(out_dim, max_outputs)):
            ax = fig.add_subplot(1, min(out_dim, max_outputs), k + 1)
            for j, path in enumerate(paths):
                ax.plot(values, path[:, k], "o-", ms=3, label=f"$z_{{{j + 1}}}$")
            ax.set_xlabel("latent value (prior quantile)")
            ax.set_ylabel(f"decoded mean $x_{{{k + 1}}}$")
    ax.legend(fontsize="small")
    fig.suptitle(f"Latent traversal: prior quantiles {lo:g}..{hi:g}, other latents at 0", fontsize="medium")
    return fig
