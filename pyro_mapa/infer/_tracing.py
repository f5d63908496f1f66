"""Pyro trace plumbing shared by the estimators: peeking at a model, per-point log-weights."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from pyro import poutine
from torch import Tensor

from ..errors import as_index_tensor
from ._pyro_compat import scale_and_mask, site_is_subsample

__all__ = [
    "IndexSiteInfo",
    "peek_index_site",
    "plate_frame",
    "reduce_to_particle_point",
    "same_scale",
    "scalar_scale",
    "site_log_prob",
]


class IndexSiteInfo(NamedTuple):
    """What a model reveals up to its index site: the site's message, the data plate and its subsample."""

    site: dict
    plate_dim: int
    plate_size: int
    subsample: Tensor


def plate_frame(site: dict, plate: str):
    """The frame of plate ``plate`` in a site's ``cond_indep_stack``, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    return None


def peek_index_site(model: Callable, site: str, plate: str, args: tuple, kwargs: dict) -> IndexSiteInfo:
    """Runs ``model`` until its sample site ``site`` and returns what is known there.

    No network has run at that point in a MAPA model, so this is cheap. The model's
    data plate must have been entered before the index site: its subsample (the
    model's own minibatch, wherever it came from) is read off the plate's
    ``_Subsample`` site.
    """
    tracer = poutine.trace(poutine.escape(model, escape_fn=lambda msg: msg["name"] == site))
    try:
        with poutine.block():
            tracer.get_trace(*args, **kwargs)
    except poutine.NonlocalExit as e:
        e.reset_stack()
        msg = e.site
    else:
        raise ValueError(
            f"the model has no sample site named {site!r}; MAPAGuide(table, site=...) must name the "
            "model's index site (the Categorical over the N codes)"
        )
    trace = tracer.trace
    frame = plate_frame(msg, plate)
    if frame is None:
        raise ValueError(
            f"the model's index site {site!r} is not inside a plate named {plate!r}; "
            f"pass plate=<the name of the model's data plate> (it is inside "
            f"{[f.name for f in msg['cond_indep_stack']]})"
        )
    if frame.dim is None:
        raise ValueError(f"plate {plate!r} must be vectorized (use `with pyro.plate(...)`, not a loop)")
    full = frame.full_size if frame.full_size is not None else frame.size
    if plate in trace and site_is_subsample(trace.nodes[plate]):
        subsample = as_index_tensor(trace.nodes[plate]["value"], int(full), per_step=True)
    else:
        subsample = torch.arange(frame.size)
    return IndexSiteInfo(msg, frame.dim, int(full), subsample)


def reduce_to_particle_point(
    log_prob: Tensor, particle_dim: int, point_dim: int | None, shape: tuple[int, int]
) -> Tensor:
    """Sums a site's batch log-probability over every plate dim except particles and points.

    Arguments:
        log_prob: The site's log-probability, a batch-shaped tensor.
        particle_dim: Negative dim of the particle plate (it may be absent, size 1).
        point_dim: Negative dim of the data plate, or ``None`` for a global site.
        shape: ``(P, B)``, or ``(P,)`` for a global site.

    Returns:
        A ``(P, B)`` (or ``(P,)``) tensor.
    """
    width = -particle_dim
    lp = log_prob.reshape((1,) * (width - log_prob.dim()) + tuple(log_prob.shape))
    keep = [0] if point_dim is None else [0, width + point_dim]
    other = [d for d in range(width) if d not in keep]
    if other:
        lp = lp.sum(dim=other)
    return lp.expand(shape)


def site_log_prob(site: dict) -> Tensor:
    """Unscaled, masked log-probability of a traced sample site (computes it if needed)."""
    if "unscaled_log_prob" not in site:
        site["unscaled_log_prob"] = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])


def scalar_scale(site: dict) -> Any:
    scale = site["scale"]
    return float(scale) if not isinstance(scale, Tensor) or scale.numel() == 1 else scale


def same_scale(a, b) -> bool:
    """Whether two site scales (floats or tensors) are equal: sites of one plate must share a scale."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
    return math.isclose(a, b, rel_tol=1e-12)
