"""``to_inference_data``: a trained model's draws, log-likelihoods and weights as ArviZ data."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from pyro import poutine
from torch import Tensor

from ..infer._pyro_compat import site_is_subsample
from ..infer._tracing import plate_frame, site_log_prob
from ..infer.mapa_guide import MAPAGuide
from ..models.codebook import AmortizedCodebook
from ._arviz_compat import from_groups

__all__ = ["to_inference_data"]


def _per_point(site: dict, plate: str) -> Tensor:
    """A site's log-probability summed over every dim but the data plate's: ``(B,)``."""
    lp = site_log_prob(site)
    frame = plate_frame(site, plate)
    dim = lp.dim() + frame.dim
    other = [d for d in range(lp.dim()) if d != dim]
    return lp.sum(other) if other else lp


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    num_draws: int = 100,
    plate: str = "data",
    **kwargs,
):
    """Draws from the guide, scores them under the model, and returns ArviZ data.

    The model and guide are run ``num_draws`` times with ``*args, **kwargs`` (use the full
    data set, e.g. ``batch_idx=None``); every sample site inside ``plate`` is recorded.

    Groups and variables (dims ``chain``, ``draw``, then ``obs`` for the observations):

    - ``posterior``: every latent site of the guide (for MAPA the index ``c``; for a VAE
      the code ``z`` with dims ``obs, latent_dim``), and for a MAPA model with a
      :class:`~pyro_mapa.AmortizedCodebook` also ``code``, the drawn index's code
      :math:`z_{c_n} = g_\\phi(x_{c_n})`;
    - ``log_likelihood``: each observed site's pointwise log-likelihood given the drawn
      latent, so ``az.loo(idata)`` works;
    - ``sample_stats``: ``log_weight``, :math:`\\log p(x_n, \\text{latent}) - \\log q(\\text{latent} \\mid x_n)`,
      the log importance weights behind the importance-sampled estimates;
    - ``observed_data``: each observed site's data.

    Example:
        >>> idata = to_inference_data(model, guide, None, num_draws=200)  # doctest: +SKIP
        >>> az.loo(idata)  # doctest: +SKIP

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or a ``DataTree`` (ArviZ 1.x).
    """
    if not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive int, got {num_draws!r}")
    posterior: dict[str, list] = {}
    log_lik: dict[str, list] = {}
    observed: dict[str, np.ndarray] = {}
    log_weights = []
    for _ in range(num_draws):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        lw = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or plate_frame(site, plate) is None:
                continue
            lp = _per_point(site, plate)
            if site["is_observed"]:
                log_lik.setdefault(name, []).append(lp.cpu().numpy())
                observed.setdefault(name, site["value"].cpu().numpy())
            else:
                g = guide_trace.nodes[name]
                lp = lp - _per_point(g, plate)
                posterior.setdefault(name, []).append(site["value"].cpu().numpy())
                if isinstance(guide, MAPAGuide) and isinstance(getattr(model, "codebook", None), AmortizedCodebook):
                    posterior.setdefault("code", []).append(model.codebook.codes(site["value"]).cpu().numpy())
            lw = lp if lw is None else lw + lp
        if lw is None:
            raise ValueError(f"the model has no sample site inside plate {plate!r}")
        log_weights.append(lw.cpu().numpy())
    if not log_lik:
        raise ValueError(f"the model has no observed site inside plate {plate!r}")
    groups = {
        "posterior": {k: np.stack(v)[None] for k, v in posterior.items()},
        "log_likelihood": {k: np.stack(v)[None] for k, v in log_lik.items()},
        "sample_stats": {"log_weight": np.stack(log_weights)[None]},
        "observed_data": observed,
    }
    dims: dict[str, list[str]] = {"log_weight": ["obs"]}
    for k, v in groups["posterior"].items():
        dims[k] = ["obs"] + ([f"{k}_dim"] if v.ndim > 3 else [])
    for k in log_lik:
        dims[k] = ["obs"] + ([f"{k}_feature"] if observed[k].ndim > 1 else [])
    return from_groups(groups, dims=dims, coords={})

