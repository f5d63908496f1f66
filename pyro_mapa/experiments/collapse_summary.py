"""The collapse diagnostics of one trained method, as plain numbers for the results JSON."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..diagnostics.collapse import collapse_diagnostics
from ..evaluation.latent_posterior import GridMassError, exact_posterior, kl_to_posterior
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
    reported (none for MAPA-free, whose codes belong to the training points only); HVAE's ``q``
    is a flow without a closed form, so its guide numbers are left out.
    Exact on the grid for ``d ≤ 2``.

    For a mean-field guide and ``d ≤ 2`` it also reports ``guide_posterior_kl``, the inference
    gap :math:`E_x \\mathrm{KL}(q(z \\mid x) \\| p_\\theta(z \\mid x)) = E_x[\\log p_\\theta(x) -
    \\mathrm{ELBO}(x)]` of the guide against its own model's exact posterior (quadrature): the
    number LiBI's second stage minimises with the decoder frozen.
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
    if isinstance(setup.guide, MeanFieldGuide) and learned.latent_dim <= 2:
        try:
            with torch.no_grad():
                post = exact_posterior(x, learned.decode, learned.likelihood, latent_dim=learned.latent_dim)
                out["guide_posterior_kl"] = float(kl_to_posterior(setup.guide.distribution(x), post).mean())
        except GridMassError as e:
            out["note"] = (out.get("note", "") + f" guide_posterior_kl left out: {e}").strip()
    frame = report.to_dataframe()
    for metric, value, stderr in zip(frame["metric"], frame["value"], frame["stderr"]):
        if not metric.startswith("unit_variance"):
            out[metric] = float(value)
            if stderr:
                out[f"{metric}_se"] = float(stderr)
    return out
