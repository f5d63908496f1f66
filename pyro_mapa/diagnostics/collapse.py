"""Posterior-collapse and identifiability diagnostics, exact on a grid for ``d ≤ 2`` (docs/method.md §11).

With data :math:`x_{1..n}`, prior :math:`p(z) = \\mathcal N(0, I)`, a guide :math:`q(z \\mid x)` and
:math:`q_{agg}(z) = \\frac1n \\sum_n q(z \\mid x_n)`:

- :func:`active_units`: unit ``u`` is active if :math:`\\mathrm{Var}_x\\, \\mathbb E_q[z_u \\mid x] > 0.01`
  (Burda et al., 2016);
- :func:`q_divergences`: :math:`\\mathbb E_x \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p)`, the aggregate-prior
  mismatch :math:`\\mathrm{KL}(q_{agg} \\,\\|\\, p)` and the mutual information under ``q``,
  :math:`I_q(x; z) = \\mathbb E_x \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p) - \\mathrm{KL}(q_{agg} \\,\\|\\, p)`;
- :func:`model_collapse_kl`: the model's own collapse :math:`\\mathbb E_x \\mathrm{KL}(p_\\theta(z \\mid x) \\,\\|\\, p)`,
  zero exactly when the posterior is the prior, i.e. when the decoder ignores ``z``
  (Wang, Blei and Cunningham, 2023);
- :func:`~pyro_mapa.diagnostics.traversal.latent_traversal_figure`: decoded prior quantiles, one latent at a time.

For ``d ≤ 2`` the integrals are sums over a :func:`~pyro_mapa.evaluation.latent_grid` (exact up to
the grid error, ``stderr`` 0); above, Monte Carlo with a standard error.
:func:`collapse_diagnostics` runs them all and returns a :class:`CollapseReport`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

if TYPE_CHECKING:  # pandas is loaded by to_dataframe only: `import pyro_mapa` stays light
    import pandas as pd

from ..errors import check_positive_int
from ..evaluation.importance import check_data
from ..evaluation.latent_posterior import (
    GridMassError,
    LatentGrid,
    exact_posterior,
    grid_log_masses,
    latent_grid,
    standard_normal_log_prob,
)
from ..models.likelihoods import Likelihood

__all__ = [
    "ActiveUnits",
    "CollapseReport",
    "Estimate",
    "QDivergences",
    "active_units",
    "collapse_diagnostics",
    "model_collapse_kl",
    "q_divergences",
]

_MAX_ELEMENTS = 2**22


class Estimate(NamedTuple):
    """A diagnostic's value, its Monte-Carlo standard error (0 on a grid) and how it was computed."""

    value: float
    stderr: float
    method: str


class ActiveUnits(NamedTuple):
    """``count`` units with ``variances`` (``(d,)``, :math:`\\mathrm{Var}_x \\mathbb E_q[z_u \\mid x]`) above ``threshold``."""

    count: int
    variances: Tensor
    threshold: float


class QDivergences(NamedTuple):
    """:math:`\\mathbb E_x \\mathrm{KL}(q \\| p)`, :math:`\\mathrm{KL}(q_{agg} \\| p)` and :math:`I_q(x; z)`, in nats."""

    expected_kl: Estimate
    aggregate_kl: Estimate
    mutual_information: Estimate


def _distribution_fn(encoder) -> Callable[[Tensor], Distribution | Tensor]:
    """A guide with ``.distribution(x)`` (e.g. ``MeanFieldGuide``) or any callable ``x -> q(z | x)``."""
    fn = getattr(encoder, "distribution", encoder)
    if not callable(fn):
        raise TypeError(f"encoder must be callable (x -> q(z|x)) or have .distribution, got {type(encoder).__name__}")
    return fn


def _q(encoder, x: Tensor) -> Distribution:
    q = _distribution_fn(encoder)(x)
    if not isinstance(q, Distribution) or len(q.batch_shape) != 1 or len(q.event_shape) != 1:
        raise TypeError(
            "encoder(x) must return a torch Distribution with batch shape (n,) and event shape (d,) "
            f"(e.g. Normal(loc, scale).to_event(1)), got {type(q).__name__}"
        )
    return q


@torch.no_grad()
def active_units(encoder, x: Tensor, threshold: float = 0.01) -> ActiveUnits:
    """Counts the units whose posterior mean varies over the data: :math:`\\mathrm{Var}_x \\mathbb E_q[z_u \\mid x] > \\mathrm{threshold}`.

    Arguments:
        encoder: A guide with ``.distribution(x)``, a callable returning a distribution (its
            ``.mean`` is used), or a callable returning the ``(n, d)`` means directly (for MAPA
            the code :math:`g_\\phi(x)`: ``codebook.encoder``).
        x: ``(n, D)`` data, ``n >= 2``.
        threshold: 0.01 in Burda et al. (2016).

    The variance is the population variance over ``x`` (divisor ``n``).
    """
    x = check_data(x)
    if x.shape[0] < 2:
        raise ValueError("active_units needs at least 2 data points")
    out = _distribution_fn(encoder)(x)
    means = out.mean if isinstance(out, Distribution) else out
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] != x.shape[0]:
        raise ValueError(f"encoder means must have shape ({x.shape[0]}, d), got {getattr(means, 'shape', None)}")
    var = means.var(dim=0, correction=0)
    return ActiveUnits(int((var > threshold).sum()), var, float(threshold))


def _grid_q_divergences(encoder, x: Tensor, grid: LatentGrid, mass_tol: float | None) -> QDivergences:
    grid = grid.to(x)
    log_pbar = torch.log_softmax(grid.log_weight, dim=-1)
    rows = max(1, _MAX_ELEMENTS // (len(grid.z) * grid.z.shape[-1]))
    ekl, agg = x.new_zeros(()), torch.zeros_like(log_pbar)
    for xb in x.split(rows):
        rho_log = grid_log_masses(_q(encoder, xb), grid, mass_tol)
        rho = rho_log.exp()
        ekl = ekl + (rho * (rho_log - log_pbar)).sum()
        agg = agg + rho.sum(0)
    agg = agg / x.shape[0]
    expected = float(ekl) / x.shape[0]
    aggregate = float((torch.xlogy(agg, agg) - agg * log_pbar).sum())
    grid_estimates = (Estimate(v, 0.0, "grid") for v in (expected, aggregate, expected - aggregate))
    return QDivergences(*grid_estimates)


def _stratified(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of ``(n, m)`` draws, ``m`` per stratum (data point)."""
    n, m = values.shape
    return float(values.mean()), float(values.var(dim=1).sum().sqrt() / (n * math.sqrt(m)))


def _mc_q_divergences(encoder, x: Tensor, num_samples: int, generator: torch.Generator | None) -> QDivergences:
    n = x.shape[0]
    q = _q(encoder, x)
    d = q.event_shape[0]
    prior = Independent(Normal(x.new_zeros(d), x.new_ones(d)), 1)
    z = _sample_with(q, num_samples, generator)  # (m, n, d)
    log_q_own = q.log_prob(z)  # (m, n)
    flat = z.reshape(-1, d)
    rows = max(1, _MAX_ELEMENTS // (n * d))
    log_agg = torch.cat([torch.logsumexp(q.log_prob(zb.unsqueeze(1)), dim=1) for zb in flat.split(rows)])
    log_agg = log_agg.reshape(num_samples, n) - math.log(n)
    log_p = standard_normal_log_prob(z)
    c = (log_agg - log_p).T  # (n, m): KL(q_agg || p) integrand under q_agg (stratified over n)
    aggregate = _stratified(c)
    try:
        closed = kl_divergence(q, prior).mean()
        expected = (float(closed), 0.0)
        mi = (expected[0] - aggregate[0], aggregate[1])
    except NotImplementedError:
        expected = _stratified((log_q_own - log_p).T)
        mi = _stratified((log_q_own - log_agg).T)
    return QDivergences(
        Estimate(*expected, "closed form" if expected[1] == 0 else "monte carlo"),
        Estimate(*aggregate, "monte carlo"),
        Estimate(*mi, "monte carlo"),
    )


def _sample_with(q: Distribution, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """Reproducible draws for Gaussian guides (``loc + scale * eps``); other guides use the global RNG."""
    base = getattr(q, "base_dist", q)
    if generator is not None and isinstance(base, Normal):
        shape = (num_samples,) + tuple(q.batch_shape) + tuple(q.event_shape)
        eps = torch.randn(shape, generator=generator, dtype=base.loc.dtype, device=base.loc.device)
        return base.loc + base.scale * eps
    return q.sample((num_samples,))


@torch.no_grad()
def q_divergences(
    encoder,
    x: Tensor,
    *,
    grid: LatentGrid | None = None,
    method: str = "auto",
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    mass_tol: float | None = 1e-2,
) -> QDivergences:
    """:math:`\\mathbb E_x \\mathrm{KL}(q(z \\mid x) \\| p)`, :math:`\\mathrm{KL}(q_{agg} \\| p)` and :math:`I_q(x; z)` over the data ``x``.

    On a grid (``method="grid"``, the default for ``d ≤ 2``) with cell masses
    :math:`\\rho_{ng}` of :math:`q(\\cdot \\mid x_n)` and :math:`\\bar p_g` of the prior, all three are
    discrete divergences, :math:`\\bar\\rho = \\frac1n\\sum_n \\rho_n` and
    :math:`I_q = \\frac1n \\sum_n \\mathrm{KL}(\\rho_n \\| \\bar\\rho) \\ge 0`, equal to the integrals
    up to the grid error. By Monte Carlo (``method="monte_carlo"``, the default for ``d > 2`` and
    for a ``q`` too narrow for the grid)
    ``num_samples`` draws per point from :math:`q(\\cdot \\mid x_n)` are a stratified sample of
    :math:`q_{agg}`, whose log-density is the exact ``n``-component mixture; the estimates are
    unbiased, the mutual information can come out negative, and
    :math:`\\mathbb E_x \\mathrm{KL}(q \\| p)` is taken in closed form when torch knows it.

    Arguments:
        encoder: A guide with ``.distribution(x)`` or a callable ``x -> q(z | x)`` with batch
            shape ``(n,)`` and event shape ``(d,)``.
        x: ``(n, D)`` data.
        grid: For the grid method (default ``latent_grid(d)``; standard-normal prior).
        method: ``"auto"``, ``"grid"`` or ``"monte_carlo"``.
        num_samples: Draws per data point (``>= 2``) for Monte Carlo.
        generator: For reproducible draws.
        mass_tol: See :func:`~pyro_mapa.evaluation.grid_log_masses`.
    """
    x = check_data(x)
    d = _q(encoder, x[:1]).event_shape[0]
    if method not in ("auto", "grid", "monte_carlo"):
        raise ValueError(f"method must be 'auto', 'grid' or 'monte_carlo', got {method!r}")
    if method == "grid" and d > 2:
        raise ValueError(f"method='grid' needs latent dimension 1 or 2, got {d}; use 'monte_carlo'")
    if method != "monte_carlo" and d <= 2:
        try:
            return _grid_q_divergences(encoder, x, grid if grid is not None else latent_grid(d), mass_tol)
        except GridMassError:
            if method == "grid":
                raise
    if check_positive_int(num_samples, "num_samples") < 2:
        raise ValueError("num_samples must be >= 2 for a standard error")
    return _mc_q_divergences(encoder, x, num_samples, generator)


def _snis_collapse(x, decode, likelihood, d, proposal, num_samples, generator) -> tuple[Tensor, Tensor]:
    """Per-point self-normalized IS estimates of KL(p(z|x) || p) and their delta-method standard errors."""
    if proposal is None:
        z = torch.randn((num_samples, x.shape[0], d), generator=generator, dtype=x.dtype, device=x.device)
        log_q = standard_normal_log_prob(z)
    else:
        q = _q(proposal, x)
        z = _sample_with(q, num_samples, generator)
        log_q = q.log_prob(z)
    log_lik = likelihood(decode(z)).log_prob(x)  # (S, n)
    log_w = log_lik + standard_normal_log_prob(z) - log_q
    w = torch.softmax(log_w, dim=0)
    h = (w * log_lik).sum(0)
    kl = h - (torch.logsumexp(log_w, dim=0) - math.log(num_samples))
    psi = num_samples * w * (log_lik - h - 1)  # influence of each draw on kl
    return kl, psi.std(dim=0) / math.sqrt(num_samples)


@torch.no_grad()
def model_collapse_kl(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    latent_dim: int,
    *,
    grid: LatentGrid | None = None,
    method: str = "auto",
    proposal=None,
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Estimate:
    """The model's own collapse, :math:`\\frac1n \\sum_n \\mathrm{KL}(p_\\theta(z \\mid x_n) \\,\\|\\, p(z))`, in nats.

    ``decode`` takes standard-normal latents (for MAPA: its decoder composed with the recovered
    prior's transform, as for :func:`~pyro_mapa.evaluation.quadrature_log_likelihood`). On a grid
    (default for ``d ≤ 2``) it is :meth:`~pyro_mapa.evaluation.GridPosterior.kl_to_prior`, zero to
    rounding when the decoder ignores ``z``. For ``d > 2``, self-normalized importance sampling with
    ``num_samples`` draws per point from ``proposal`` (a guide or ``x -> q(z | x)``; default the
    prior): :math:`\\widehat{\\mathrm{KL}} = \\sum_s \\tilde w_s \\ell_s - \\log \\frac1S \\sum_s w_s`
    with :math:`\\ell_s = \\log p(x \\mid z_s)`. It is biased by :math:`O(1/S)` (a ratio estimator,
    and Jensen's bias of :math:`\\log \\hat p`); the standard error is the delta method's, trustworthy
    only when the weights are well behaved.
    """
    x = check_data(x)
    d = check_positive_int(latent_dim, "latent_dim")
    if method == "auto":
        method = "grid" if d <= 2 else "monte_carlo"
    if method == "grid":
        grid = (grid if grid is not None else latent_grid(d)).to(x)
        params = decode(grid.z)
        rows = max(1, _MAX_ELEMENTS // (len(grid.z) * x.shape[1]))
        kl = torch.cat([exact_posterior(xb, lambda _: params, likelihood, grid).kl_to_prior() for xb in x.split(rows)])
        return Estimate(float(kl.mean()), 0.0, "grid")
    if method != "monte_carlo":
        raise ValueError(f"method must be 'auto', 'grid' or 'monte_carlo', got {method!r}")
    if check_positive_int(num_samples, "num_samples") < 2:
        raise ValueError("num_samples must be >= 2 for a standard error")
    rows = max(1, _MAX_ELEMENTS // (num_samples * max(d, x.shape[1])))
    parts = [_snis_collapse(xb, decode, likelihood, d, proposal, num_samples, generator) for xb in x.split(rows)]
    kl, se = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return Estimate(float(kl.mean()), float(se.pow(2).sum().sqrt() / x.shape[0]), "importance sampling")


@dataclass
class CollapseReport:
    """The diagnostics of :func:`collapse_diagnostics`; ``None`` where an input was not given."""

    latent_dim: int
    active_units: ActiveUnits | None = None
    q: QDivergences | None = None
    model_kl: Estimate | None = None

    def to_dataframe(self) -> pd.DataFrame:
        """One row per number: ``metric``, ``value``, ``stderr``, ``method`` (nats for divergences)."""
        import pandas as pd

        rows = []
        if self.active_units is not None:
            rows.append(("active_units", float(self.active_units.count), 0.0, "exact"))
            for u, v in enumerate(self.active_units.variances.tolist()):
                rows.append((f"unit_variance_{u + 1}", v, 0.0, "exact"))
        if self.q is not None:
            names = ("expected_kl_q_prior", "aggregate_kl", "mutual_information")
            rows += [(name, *est) for name, est in zip(names, self.q)]
        if self.model_kl is not None:
            rows.append(("model_collapse_kl", *self.model_kl))
        return pd.DataFrame(rows, columns=["metric", "value", "stderr", "method"])


def collapse_diagnostics(
    x: Tensor,
    latent_dim: int,
    *,
    encoder=None,
    decode: Callable[[Tensor], Tensor] | None = None,
    likelihood: Likelihood | None = None,
    grid: LatentGrid | None = None,
    method: str = "auto",
    num_samples: int = 1000,
    threshold: float = 0.01,
    seed: int = 0,
) -> CollapseReport:
    """Active units, :math:`I_q(x; z)`, :math:`\\mathrm{KL}(q_{agg} \\| p)` and the model's collapse KL on data ``x``.

    Arguments:
        x: ``(n, D)`` data (e.g. the training set).
        latent_dim: ``d``.
        encoder: A guide with ``.distribution(x)``, a callable ``x -> q(z | x)``, or (active
            units only, e.g. MAPA's ``codebook.encoder``) a callable returning ``(n, d)`` means.
        decode, likelihood: The generative model on standard-normal latents, for
            :func:`model_collapse_kl`.
        grid: The grid for ``d ≤ 2`` (default :func:`~pyro_mapa.evaluation.latent_grid`).
        method: ``"auto"`` (grid for ``d ≤ 2``), ``"grid"`` or ``"monte_carlo"``.
        num_samples: Draws per point for Monte Carlo (the ``q`` divergences use a tenth).
        threshold: For :func:`active_units`.
        seed: Seeds the Monte-Carlo draws.
    """
    x = check_data(x)
    d = check_positive_int(latent_dim, "latent_dim")
    if (decode is None) != (likelihood is None):
        raise ValueError("pass both decode and likelihood (for the model's collapse KL) or neither")
    report = CollapseReport(d)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if encoder is not None:
        report.active_units = active_units(encoder, x, threshold)
        if isinstance(_distribution_fn(encoder)(x[:1]), Distribution):
            report.q = q_divergences(
                encoder, x, grid=grid, method=method, num_samples=max(2, num_samples // 10), generator=gen
            )
    if decode is not None:
        proposal = encoder if report.q is not None else None
        report.model_kl = model_collapse_kl(x, decode, likelihood, d, grid=grid, method=method, proposal=proposal,
                                            num_samples=num_samples, generator=gen)
    return report
