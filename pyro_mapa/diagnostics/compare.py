"""Model comparison on held-out data: pointwise :math:`\\log p(x_n)` per model, ranked by ``az.compare``.

A VAE-type model has one latent per data point and shared parameters :math:`\\theta` that
are point estimates. What ArviZ's model comparison needs, the pointwise log predictive
density of data the model was not fitted on, is then the marginal likelihood of each
held-out point,

.. math:: \\mathrm{elpd} = \\sum_{n=1}^{n_\\text{test}} \\log p_\\theta(x_n), \\qquad
    \\log p_\\theta(x_n) = \\log \\int p_\\theta(x_n \\mid z)\\, p(z)\\, dz ,

with the standard error :math:`\\sqrt{n \\operatorname{Var}_n \\log p_\\theta(x_n)}` of a sum over
a random sample of points (the one ``az.loo`` reports). The integral is exact by quadrature
for latent dimension 1 or 2, and importance-sampled otherwise, with a Monte-Carlo standard
error and the PSIS k̂ of every point's weights (Yao et al., 2018). Packed as ArviZ ELPD
data (p = 0: held-out points need no correction for optimism), ``az.compare`` ranks the
models and gives the standard error of each difference from the paired pointwise
differences, and ``az.plot_compare`` / ``az.plot_khat`` plot them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..evaluation.fit_proposal import fit_proposal
from ..evaluation.importance import ImportanceEstimate, check_data, importance_log_likelihood
from ..priors.copula import GaussianCopulaPrior
from ..priors.learned_model import LearnedModel
from . import _arviz_compat as compat
from .importance import ImportanceDiagnostics, importance_diagnostics

__all__ = ["Comparison", "PointwiseLogLikelihood", "compare", "pointwise_log_likelihood"]

METHODS = ("auto", "exact", "importance")


@dataclass
class PointwiseLogLikelihood:
    """:math:`\\log p(x_n)` of every test point under one model, and how it was computed.

    Attributes:
        log_px: ``(n,)`` float64 values.
        method: ``"exact"`` (quadrature or the model's own ``log_prob``) or ``"importance"``.
        stderr: ``(n,)`` Monte-Carlo standard errors (zeros for exact values).
        num_samples: Importance draws per point (0 for exact values).
        diagnostics: Pareto k̂ and Kish ESS of each point's weights (importance only).
    """

    log_px: Tensor
    method: str
    stderr: Tensor
    num_samples: int = 0
    diagnostics: ImportanceDiagnostics | None = None

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error of the sum, :math:`\\sqrt{\\sum_n \\mathrm{se}_n^2}`."""
        return float(self.stderr.pow(2).sum().sqrt())


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        table: ``az.compare``'s DataFrame (best model first; columns ``rank``, the elpd
            (``elpd_loo`` in ArviZ 0.x, ``elpd`` in 1.x), ``p``, ``elpd_diff``, ``weight``,
            ``se``, ``dse``, ``warning``, ...) plus ``method`` and ``mc_se``, the
            Monte-Carlo standard error of an importance-sampled elpd (0 when exact).
            ``az.plot_compare(table)`` plots it.
        elpd: The ArviZ ELPD data of each model (``az.plot_khat(elpd[name])`` for an
            importance-sampled one).
        pointwise: Each model's :class:`PointwiseLogLikelihood`.
    """

    table: Any
    elpd: dict[str, Any]
    pointwise: dict[str, PointwiseLogLikelihood]

    @property
    def ranking(self) -> list[str]:
        """Model names, best first."""
        return list(self.table.index)


def _is_method_setup(model: Any) -> bool:
    """A :class:`~pyro_mapa.methods.MethodSetup` (by its interface: ``experiments`` is a layer above)."""
    return callable(getattr(model, "learned_model", None))


def _is_learned_model(model: Any) -> bool:
    """A :class:`~pyro_mapa.priors.LearnedModel`: decoder, prior, likelihood and latent size."""
    return isinstance(model, LearnedModel)


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def _importance(learned, x: Tensor, num_samples: int, fit_steps: int, seed: int) -> ImportanceEstimate:
    """Importance sampling with a mixture proposal fitted to the learned model (in ``u`` for a copula prior)."""
    params = list(learned.decoder.parameters()) if isinstance(learned.decoder, nn.Module) else []
    x = x.to(params[0].dtype) if params else x  # the proposal and the draws follow the decoder's precision
    prior = learned.prior
    prior_samples = None
    if isinstance(prior, GaussianCopulaPrior):
        # z = T(u), u ~ N(0, 1): integrate over u, where the prior density is known.
        decode, log_prior = learned.decode, _standard_normal_log_prob
    else:
        decode, log_prior = learned.decoder, learned.log_prior
        if prior is not None:
            prior_samples = prior.sample((1000,), generator=torch.Generator().manual_seed(seed)).detach().to(x)
    proposal = fit_proposal(x, decode, log_prior, learned.likelihood, learned.latent_dim, steps=fit_steps,
                            prior_samples=prior_samples, seed=seed)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return importance_log_likelihood(x, decode, log_prior, learned.likelihood, proposal,
                                     num_samples=num_samples, generator=generator)


def _from_estimate(est: ImportanceEstimate, n: int, name: str) -> PointwiseLogLikelihood:
    if est.log_weights is None:
        raise ValueError(f"model {name!r}: the ImportanceEstimate has no log_weights; keep them for k̂")
    lw = est.log_weights
    if lw.shape[0] != n:
        raise ValueError(f"model {name!r}: log_weights have {lw.shape[0]} rows for {n} test points")
    diag = importance_diagnostics(lw)
    return PointwiseLogLikelihood(est.log_px.detach().double().cpu(), "importance",
                                  est.stderr.detach().double().cpu(), lw.shape[1], diag)


def pointwise_log_likelihood(
    model: Any,
    x: Tensor,
    *,
    method: str = "auto",
    num_samples: int = 1000,
    fit_steps: int = 2000,
    seed: int = 0,
    name: str = "model",
) -> PointwiseLogLikelihood:
    """:math:`\\log p(x_n)` of every row of ``x`` under a trained model.

    Arguments:
        model: A :class:`~pyro_mapa.methods.MethodSetup` (its
            ``learned_model(seed=seed)`` is used), a
            :class:`~pyro_mapa.priors.LearnedModel`, anything with
            ``log_prob(x)`` returning ``(n,)`` values or an
            :class:`~pyro_mapa.evaluation.ImportanceEstimate`, or such a result itself
            (a ``(n,)`` tensor / array or an ``ImportanceEstimate``).
        x: ``(n, D)`` held-out points.
        method: ``"auto"`` (exact quadrature for a learned model with latent dimension
            1 or 2, importance sampling above), ``"exact"`` or ``"importance"`` (for a
            learned model, with a :func:`~pyro_mapa.evaluation.fit_proposal` mixture).
        num_samples: Importance draws per point.
        fit_steps: Adam steps fitting the importance proposal.
        seed: Seeds the prior recovery, the proposal fit and the draws.
        name: The model's name in error messages.
    """
    return _pointwise(model, check_data(x), "x", method, num_samples, fit_steps, seed, name)


def _check_columns(model: Any, x: Tensor, x_name: str, name: str) -> None:
    """A learned model knows its number of columns (its decoder's outputs): refuse other test points."""
    columns = getattr(model, "num_columns", None)
    if isinstance(columns, int) and x.shape[1] != columns:
        raise ValueError(f"model {name!r}: {x_name} has {x.shape[1]} columns, the model {columns}; pass test "
                         f"points of the training data's shape (n, {columns})")


def _pointwise(model: Any, x: Tensor, x_name: str, method: str, num_samples: int, fit_steps: int, seed: int,
               name: str) -> PointwiseLogLikelihood:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n = x.shape[0]
    if _is_method_setup(model):
        data = getattr(getattr(model, "model", None), "data", None)
        if isinstance(data, Tensor) and data.dim() == 2 and data.shape[1] != x.shape[1]:
            raise ValueError(f"model {name!r}: {x_name} has {x.shape[1]} columns, the model {data.shape[1]}; "
                             f"pass test points of the training data's shape (n, {data.shape[1]})")
        model = model.learned_model(seed=seed)
    if _is_learned_model(model):
        _check_columns(model, x, x_name, name)
        if method == "importance" or (method == "auto" and model.latent_dim > 2):
            return _from_estimate(_importance(model, x, num_samples, fit_steps, seed), n, name)
        values = model.log_prob(x)
    elif method == "importance":
        raise ValueError(f"model {name!r}: method='importance' needs a LearnedModel or MethodSetup "
                         f"(decoder, prior, likelihood), got {type(model).__name__}")
    elif isinstance(model, (ImportanceEstimate, Tensor, np.ndarray)):
        values = model
    elif callable(getattr(model, "log_prob", None)):
        values = model.log_prob(x)
    else:
        raise TypeError(f"model {name!r} must be a MethodSetup, a LearnedModel, have log_prob(x), or be "
                        f"precomputed (n,) values or an ImportanceEstimate; got {type(model).__name__}")
    if isinstance(values, ImportanceEstimate):
        return _from_estimate(values, n, name)
    values = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if values.shape != (n,):
        raise ValueError(f"model {name!r}: log p(x) has shape {tuple(values.shape)}, expected ({n},): "
                         "one value per test point")
    return PointwiseLogLikelihood(values, "exact", torch.zeros(n, dtype=torch.float64))


def compare(
    models: Mapping[str, Any],
    x_test: Tensor,
    *,
    method: str = "auto",
    num_samples: int = 1000,
    fit_steps: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Ranks trained models by the log-likelihood of the same held-out points, with ``az.compare``.

    Each model's pointwise :math:`\\log p(x_n)` (see :func:`pointwise_log_likelihood`)
    becomes ArviZ ELPD data: elpd :math:`= \\sum_n \\log p(x_n)`, ``se`` :math:`=
    \\sqrt{n \\operatorname{Var}_n}`, ``p = 0``, and for importance-sampled values the PSIS
    k̂ of each point (``warning`` when any is above ArviZ's threshold). ``az.compare``
    then orders the models and gives ``dse``, the standard error of each model's elpd
    difference from the best, from the paired pointwise differences (so the test points'
    shared variation cancels). An importance-sampled elpd also carries Monte-Carlo error
    (column ``mc_se``; it is already inside ``dse``, through the pointwise values).

    Example:
        >>> result = compare({"MAPA": mapa, "VAE": vae}, ds.test)  # doctest: +SKIP
        >>> result.table  # doctest: +SKIP
        >>> az.plot_compare(result.table)  # doctest: +SKIP

    Arguments:
        models: ``{name: model}``; see :func:`pointwise_log_likelihood` for what a model can be.
        x_test: ``(n, D)`` points none of the models was trained on.
        method, num_samples, fit_steps, seed: As in :func:`pointwise_log_likelihood`.

    Returns:
        A :class:`Comparison` (``table``, ``elpd``, ``pointwise``).

    Raises:
        TypeError: ``models`` not a dict, a non-string name, or a model of no known kind.
        ValueError: An empty ``models``, malformed ``x_test`` (NaN or inf included, or another
            number of columns than a learned model's), or a model whose log-likelihood is not
            finite on some test point.

    Warns:
        UserWarning: ``x_test`` has a single row (``se`` and ``dse`` are then 0 and meaningless).
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a dict {{name: model}}, e.g. {{'MAPA': mapa, 'VAE': vae}}; "
                        f"got {type(models).__name__}")
    if not models:
        raise ValueError("models must be a non-empty dict {name: model}, e.g. {'MAPA': mapa, 'VAE': vae}")
    x_test = check_data(x_test, "x_test")
    if x_test.shape[0] < 2:
        warnings.warn(
            f"compare got {x_test.shape[0]} test point: the standard errors se and dse are sqrt(n Var_n) of the "
            "pointwise values, 0 for a single point, and say nothing; pass at least 2 (better hundreds of) "
            "held-out points for a ranking with uncertainty",
            UserWarning,
            stacklevel=2,
        )
    pointwise, elpds = {}, {}
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"model names must be strings, got {name!r}")
        pw = _pointwise(model, x_test, "x_test", method, num_samples, fit_steps, seed, name)
        bad = ~torch.isfinite(pw.log_px)
        if bool(bad.any()):
            raise ValueError(f"model {name!r}: log p(x) is not finite on {int(bad.sum())} test point(s), "
                             f"e.g. row {int(bad.nonzero()[0])}; az.compare needs finite values")
        k = None if pw.diagnostics is None else pw.diagnostics.pareto_k
        pointwise[name] = pw
        elpds[name] = compat.elpd_data(pw.log_px.numpy(), num_samples=pw.num_samples, pareto_k=k)
    table = compat.compare(elpds)
    table["method"] = [pointwise[m].method for m in table.index]
    table["mc_se"] = [pointwise[m].mc_se for m in table.index]
    return Comparison(table, elpds, pointwise)
