"""The collapse diagnostics of one trained method, as plain numbers for the results JSON."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_mapa.diagnostics.collapse import collapse_diagnostics
from pyro_mapa.errors import check_positive_int
from pyro_mapa.evaluation.latent_posterior import GridMassError, exact_posterior, kl_to_posterior
from pyro_mapa.models import EmpiricalizedModel, MeanFieldGuide
from pyro_mapa.priors.learned_model import LearnedModel
from pyro_mapa.methods import MethodSetup

__all__ = ["collapse_summary", "guide_posterior_kl"]


@torch.no_grad()
def guide_posterior_kl(guide: MeanFieldGuide, learned: LearnedModel, x: Tensor, num_samples: int = 1000,
                       seed: int = 0, method: str = "auto") -> tuple[float, float]:
    """:math:`E_x \\mathrm{KL}(q(z \\mid x) \\| p_\\theta(z \\mid x))` of a guide against its model's exact posterior.

    By quadrature on the posterior's grid when ``q`` has its mass on the grid (standard error 0);
    for a ``q`` narrower than the grid spacing, by Monte Carlo under ``q`` with the exact
    :math:`\\log p_\\theta(x)` of the same grid:

    .. math:: \\mathrm{KL}_n = E_{q}[\\log q(z \\mid x_n) - \\log p_\\theta(x_n, z)] + \\log p_\\theta(x_n),

    ``num_samples`` draws per point, returning the Monte-Carlo standard error of the mean over points.
    ``method``: ``"auto"`` (as described), ``"grid"`` (raises :class:`GridMassError` for a narrow
    ``q``) or ``"monte_carlo"``. For models with a standard-normal prior on ``z`` (``learned.prior is None``) and ``d <= 2``.
    """
    if learned.prior is not None:
        raise ValueError("guide_posterior_kl needs a model with the standard-normal prior the guide's z lives in")
    if method not in ("auto", "grid", "monte_carlo"):
        raise ValueError(f"method must be 'auto', 'grid' or 'monte_carlo', got {method!r}")
    if check_positive_int(num_samples, "num_samples") < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {num_samples}")
    post = exact_posterior(x, learned.decode, learned.likelihood, latent_dim=learned.latent_dim)
    q = guide.distribution(x)
    if method != "monte_carlo":
        try:
            return float(kl_to_posterior(q, post).mean()), 0.0
        except GridMassError:
            if method == "grid":
                raise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = q.sample(torch.Size([num_samples]))  # (M, n, d)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_joint = learned.likelihood(learned.decode(z)).log_prob(x) + log_prior
    terms = (q.log_prob(z) - log_joint).double() + post.log_px  # (M, n)
    n = terms.shape[1]
    se = float(terms.var(0).div(num_samples).sum().sqrt() / n)
    return float(terms.mean()), se


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
    number LiBI's second stage minimises with the decoder frozen (:func:`guide_posterior_kl`).
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
        kl, se = guide_posterior_kl(setup.guide, learned, x)
        out["guide_posterior_kl"] = kl
        if se:
            out["guide_posterior_kl_se"] = se
    frame = report.to_dataframe()
    for metric, value, stderr in zip(frame["metric"], frame["value"], frame["stderr"]):
        if not metric.startswith("unit_variance"):
            out[metric] = float(value)
            if stderr:
                out[f"{metric}_se"] = float(stderr)
    return out
