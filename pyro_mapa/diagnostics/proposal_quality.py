"""Is the fixed MAPA table a good proposal for the model that was learned? (docs/method.md §3, exact for moderate N.)"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..evaluation.index_loglik import index_log_likelihood
from ..models.codebook import AmortizedCodebook
from ..models.free_codebook import FreeCodebook
from ..models.likelihoods import Likelihood
from ..table.posterior_table import PosteriorTable

__all__ = ["ProposalQuality", "index_posterior", "proposal_quality"]


@torch.no_grad()
def index_posterior(
    codebook: AmortizedCodebook | FreeCodebook, likelihood: Likelihood, x: Tensor | None = None, chunk_size: int = 256
) -> Tensor:
    """The learned empiricalized model's exact posterior over indices (Eq. 7), ``(n, N)`` log-probabilities.

    .. math:: \\log p(c = i \\mid x) = \\ell_i(x) - \\operatorname{logsumexp}_j \\ell_j(x),
        \\quad \\ell_i(x) = \\log p_\\theta(x \\mid f_\\theta(g_\\phi(x_i)))

    ``O(n·N)`` memory: for moderate ``N``.
    """
    params = codebook.decoder(codebook.codes())
    x = codebook.data if x is None else x
    lp = index_log_likelihood(x, params, likelihood, chunk_size)  # (n, N)
    return lp - lp.logsumexp(1, keepdim=True)



@dataclass
class ProposalQuality:
    """Per-point comparison of the MAPA table ``q`` with the learned model's index posterior ``p``.

    Attributes:
        kl: :math:`\\mathrm{KL}(p \\| q)` per point (``inf`` where ``q`` misses mass of ``p``,
            e.g. a truncated table).
        tv: total variation :math:`\\tfrac12 \\sum_i |p_i - q_i|`.
        top_k_mass: the share of ``p``'s mass inside ``q``'s top ``K`` (summed exactly by the bound).
        remainder_ess_fraction: Kish ESS per draw of the remainder's importance weights
            :math:`\\tilde p / \\tilde q` (both renormalized outside the top ``K``): 1 is a
            perfect proposal, ``1/N`` a useless one; ESS of ``S`` draws is about ``S`` times it.
        num_top: ``K``.
    """

    kl: Tensor
    tv: Tensor
    top_k_mass: Tensor
    remainder_ess_fraction: Tensor
    num_top: int

    def summary(self) -> dict[str, float]:
        """Means and quantiles over points."""
        out = {}
        for name in ("kl", "tv", "top_k_mass", "remainder_ess_fraction"):
            v = getattr(self, name).double()
            finite = v[torch.isfinite(v)]
            out[f"{name}_mean"] = float(v.mean())
            out[f"{name}_median"] = float(finite.median()) if len(finite) else math.nan
        return out

    def plot(self, axes=None):
        """Histograms of KL, top-K mass and remainder ESS fraction; returns the figure."""
        import matplotlib.pyplot as plt

        if axes is None:
            fig, axes = plt.subplots(1, 3, figsize=(11, 3))
        else:
            fig = axes[0].figure
        kl = self.kl[torch.isfinite(self.kl)]
        axes[0].hist(kl.numpy(), bins=40)
        axes[0].set_xlabel("KL(p ‖ q) per point")
        axes[1].hist(self.top_k_mass.numpy(), bins=40, range=(0, 1))
        axes[1].set_xlabel(f"posterior mass inside MAPA's top-{self.num_top}")
        axes[2].hist(self.remainder_ess_fraction.numpy(), bins=40, range=(0, 1))
        axes[2].set_xlabel("remainder ESS per draw (Kish)")
        for ax in axes:
            ax.set_ylabel("points")
        fig.tight_layout()
        return fig


def proposal_quality(table: PosteriorTable, log_posterior: Tensor, rows: Tensor | None = None,
                     num_top: int = 5) -> ProposalQuality:
    """How good the fixed table is as a proposal for a model's exact index posterior.

    Arguments:
        table: The MAPA table (``q``).
        log_posterior: ``(n, N)`` exact log posterior over indices (e.g. :func:`index_posterior`).
        rows: The table rows matching ``log_posterior``'s rows (default: all, in order).
        num_top: ``K`` of the bound being assessed.
    """
    n, big_n = log_posterior.shape
    if big_n != table.num_categories:
        raise ValueError(f"log_posterior has {big_n} columns but the table has {table.num_categories} categories")
    rows = torch.arange(n) if rows is None else rows
    r = table.rows(rows)
    log_q = torch.full((n, big_n), -math.inf, dtype=log_posterior.dtype)
    log_q.scatter_(1, r.indices.cpu(), r.log_probs.cpu().to(log_posterior.dtype))
    log_p = log_posterior.cpu()
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(1)
    tv = 0.5 * (p - log_q.exp()).abs().sum(1)
    top = r.indices[:, :num_top].cpu()
    top_mass = p.gather(1, top).sum(1)
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    lp_rest = torch.where(rest, log_p, torch.full_like(log_p, -math.inf))
    lq_rest = torch.where(rest, log_q, torch.full_like(log_q, -math.inf))
    lp_rest = lp_rest - lp_rest.logsumexp(1, keepdim=True)
    lq_rest = lq_rest - lq_rest.logsumexp(1, keepdim=True)
    # Kish ESS per draw under q~: 1 / E_q~[w^2] with w = p~/q~, i.e. 1 / sum p~^2 / q~.
    terms = torch.where(torch.isfinite(lp_rest), 2 * lp_rest - lq_rest, torch.full_like(lp_rest, -math.inf))
    ess_frac = torch.exp(-terms.logsumexp(1))
    return ProposalQuality(kl, tv, top_mass, torch.nan_to_num(ess_frac, nan=0.0), num_top)

