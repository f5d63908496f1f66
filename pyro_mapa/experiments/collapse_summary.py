"""The collapse diagnostics of one trained method, as plain numbers for the results JSON."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..diagnostics.collapse import collapse_diagnostics
from ..evaluation.latent_posterior import GridMassError
from ..models import EmpiricalizedModel, MeanFieldGuide
from .learned_model import LearnedModel
from .methods import MethodSetup

__all__ = ["collapse_summary"]


def collapse_summary(setup: MethodSetup, learned: LearnedModel, x: Tensor) -> dict[str, Any]:
    """Active units, I_q(x; z), KL(q_agg ‖ p), E_x KL(q ‖ p) and the model's collapse E_x KL(p_θ(z|x) ‖ p(z)).

    The model's collapse KL is computed for every method through its learned generative model
    (decoder and prior, on standard-normal latents: MAPA's through its recovered prior). The
    guide's numbers need a mean-field Gaussian ``q(z|x)`` (VAE, IWAE, RenyiELBO, InfoVAE, LIDVAE,
    LiBI); MAPA has no guide network, so only its active units (of the codes ``g(x)``) are
    reported (none for MAPA-free, whose codes belong to the training points only); HVAE's ``q`` is a flow without a closed form, so its guide numbers are left out.
    Exact on the grid for ``d ≤ 2``.
    """
    encoder = None
    if isinstance(setup.guide, MeanFieldGuide):
        encoder = setup.guide
    elif isinstance(setup.model, EmpiricalizedModel):
        # None for free codes (MAPA-free): they have no map from a new x to its code.
        encoder = getattr(setup.model.codebook, "encoder", None)
    try:
        report = collapse_diagnostics(x, learned.latent_dim, encoder=encoder, decode=learned.decode,
                                      likelihood=learned.likelihood)
    except GridMassError as e:  # a guide narrower than the grid spacing: keep the model's number only
        report = collapse_diagnostics(x, learned.latent_dim, decode=learned.decode, likelihood=learned.likelihood)
        out = {"note": f"guide numbers left out: {e}"}
    else:
        out = {}
    frame = report.to_dataframe()
    for metric, value, stderr in zip(frame["metric"], frame["value"], frame["stderr"]):
        if not metric.startswith("unit_variance"):
            out[metric] = float(value)
            if stderr:
                out[f"{metric}_se"] = float(stderr)
    return out
