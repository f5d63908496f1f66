"""Diagnostics in the Pyro + ArviZ workflow: ArviZ data, proposal quality, importance-weight reliability, traces.

- :func:`to_inference_data`: posterior draws of each observation's latent (for MAPA: the
  index and its code), pointwise log-likelihood (so ``az.loo`` works), log importance
  weights and the observed data.
- :func:`index_posterior` and :func:`proposal_quality`: is the fixed MAPA table a good
  proposal for the model that was learned? (METHOD.md §3, exact for moderate ``N``.)
- :func:`importance_diagnostics`: Pareto k̂ (PSIS, via ArviZ) and Kish ESS of importance
  weights, with k̂ withheld where it is not meaningful.
- :class:`TrainingTrace`: loss and validation log-likelihood per epoch, as a table and a plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ._arviz_compat import from_groups, pareto_k
from ._tracing import plate_frame, site_log_prob
from .codebook import AmortizedCodebook
from .guide import MAPAGuide
from .likelihoods import Likelihood
from .posterior_table import PosteriorTable

__all__ = [
    "ImportanceDiagnostics",
    "ProposalQuality",
    "TrainingTrace",
    "importance_diagnostics",
    "index_posterior",
    "kish_ess",
    "proposal_quality",
    "to_inference_data",
]


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


@torch.no_grad()
def index_posterior(
    codebook: AmortizedCodebook, likelihood: Likelihood, x: Tensor | None = None, chunk_size: int = 256
) -> Tensor:
    """The learned empiricalized model's exact posterior over indices (Eq. 7), ``(n, N)`` log-probabilities.

    .. math:: \\log p(c = i \\mid x) = \\ell_i(x) - \\operatorname{logsumexp}_j \\ell_j(x),
        \\quad \\ell_i(x) = \\log p_\\theta(x \\mid f_\\theta(g_\\phi(x_i)))

    ``O(n·N)`` memory: for moderate ``N``.
    """
    params = codebook.decoder(codebook.codes())
    x = codebook.data if x is None else x
    out = []
    for start in range(0, x.shape[0], chunk_size):
        lp = likelihood(params.unsqueeze(0)).log_prob(x[start : start + chunk_size].unsqueeze(1))  # (b, N)
        out.append(lp - lp.logsumexp(1, keepdim=True))
    return torch.cat(out)


def kish_ess(log_weights: Tensor) -> Tensor:
    """Kish effective sample size :math:`(\\sum w)^2 / \\sum w^2` over the last dim, from log-weights."""
    return torch.exp(2 * log_weights.logsumexp(-1) - (2 * log_weights).logsumexp(-1))


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


@dataclass
class ImportanceDiagnostics:
    """Pareto k̂ and Kish ESS of per-point importance weights.

    k̂ (Vehtari et al., 2024): below 0.5 the weights have finite variance and the estimate
    is reliable; 0.5-0.7 usable with care; above 0.7 (more precisely
    :math:`\\min(1 - 1/\\log_{10} S, 0.7)`) the estimate is unreliable: use more samples
    or a better proposal. ``pareto_k`` is NaN where it is not meaningful: when the weights
    take few distinct values (a discrete proposal over a small set, e.g. MAPA's top-K
    plus a few remainder draws), the generalized Pareto fit to the tail is degenerate.
    """

    pareto_k: np.ndarray
    ess: np.ndarray
    meaningful: np.ndarray
    num_samples: int

    @property
    def k_threshold(self) -> float:
        return min(1 - 1 / math.log10(self.num_samples), 0.7) if self.num_samples > 10 else 0.7

    def summary(self) -> dict[str, float]:
        k = self.pareto_k[self.meaningful]
        return {
            "pareto_k_max": float(k.max()) if k.size else math.nan,
            "share_k_above_threshold": float((k > self.k_threshold).mean()) if k.size else math.nan,
            "k_threshold": self.k_threshold,
            "share_k_meaningful": float(self.meaningful.mean()),
            "ess_min": float(self.ess.min()),
            "ess_median": float(np.median(self.ess)),
        }


def importance_diagnostics(log_weights: Tensor | np.ndarray, min_distinct: int = 20) -> ImportanceDiagnostics:
    """Pareto k̂ (PSIS, computed by ArviZ) and Kish ESS for ``(n, S)`` log importance weights.

    Arguments:
        log_weights: One row of ``S`` log-weights per point.
        min_distinct: Fewer distinct weights than this in a row and its k̂ is reported
            as NaN (not meaningful) instead of ArviZ's degenerate value.
    """
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    if lw.dim() != 2 or lw.shape[1] < 2:
        raise ValueError(f"log_weights must have shape (n, S) with S >= 2, got {tuple(lw.shape)}")
    if torch.isnan(lw).any():
        raise ValueError("log_weights contain NaN")
    ess = kish_ess(lw).numpy()
    distinct = np.array([len(torch.unique(row)) for row in lw])
    meaningful = distinct >= min_distinct
    k = np.full(lw.shape[0], np.nan)
    if meaningful.any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ warns on large k̂; we report it instead
            k[meaningful] = pareto_k(lw[torch.from_numpy(meaningful)].numpy())
    return ImportanceDiagnostics(k, ess, meaningful, lw.shape[1])


@dataclass
class TrainingTrace:
    """Collects the loss (and optionally a validation log-likelihood) per epoch from :func:`~pyro_mapa.training.fit`.

    Example:
        >>> trace = TrainingTrace(valid_ll=lambda: float(setup.learned_model().log_prob(x_val).mean()))  # doctest: +SKIP
        >>> fit(model, guide, loss, N, callback=trace)  # doctest: +SKIP
        >>> trace.to_dataframe()  # doctest: +SKIP
    """

    valid_ll: Callable[[], float] | None = None
    every: int = 1
    rows: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, epoch: int, loss: float) -> bool:
        row = {"epoch": epoch, "loss": loss}
        if self.valid_ll is not None and epoch % self.every == 0:
            row["valid_ll"] = float(self.valid_ll())
        self.rows.append(row)
        return False

    def to_dataframe(self):
        """A tidy ``pandas.DataFrame``: one row per epoch, columns ``epoch, loss[, valid_ll]``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self, ax=None):
        """Loss (left axis) and validation log-likelihood (right axis) against epoch; returns the figure."""
        import matplotlib.pyplot as plt

        df = self.to_dataframe()
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3))
        else:
            fig = ax.figure
        ax.plot(df["epoch"], df["loss"], color="C0")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss / point", color="C0")
        if "valid_ll" in df:
            v = df.dropna(subset=["valid_ll"])
            ax2 = ax.twinx()
            ax2.plot(v["epoch"], v["valid_ll"], color="C1", marker=".")
            ax2.set_ylabel("validation LL / point", color="C1")
        fig.tight_layout()
        return fig
