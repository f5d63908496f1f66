"""``to_inference_data``: a trained model's latent draws, importance weights and predictive samples as ArviZ data.

Why there is no ``log_likelihood`` group: ArviZ reads the ``posterior`` group as draws of
parameters *shared by all points* and ``log_likelihood`` as :math:`\\log p(x_n \\mid \\theta^{(s)})`
for each draw, and ``az.loo`` then estimates :math:`\\log p(x_n \\mid x_{-n})` by PSIS from the
ratios :math:`1 / p(x_n \\mid \\theta^{(s)})`. Here the latents are *one per point* (a code
:math:`z_n` or an index :math:`c_n`) and are drawn from the proposal :math:`q(\\cdot \\mid x_n)`,
not from a posterior of shared parameters; :math:`\\log p(x_n \\mid z_n^{(s)})` under those
draws is a reconstruction term, and PSIS-LOO on it estimates nothing (on a 2000-point ring
it gave Pareto k̂ > 1 for every point and ranked the models in reverse). The decoder's
parameters :math:`\\theta` are point estimates, so the predictive density of a held-out
point is the marginal :math:`\\log p_\\theta(x_n)`: :func:`~pyro_mapa.diagnostics.compare`
computes it (exact or importance-sampled) and hands it to ``az.compare``. Without the
group, ``az.loo(idata)`` raises ArviZ's ``TypeError: log likelihood not found in inference
data object``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pyro import poutine
from torch import Tensor

from ..infer._pyro_compat import site_is_subsample
from ..infer._tracing import plate_frame, site_log_prob
from ..infer.mapa_guide import MAPAGuide
from ..models.codebook import AmortizedCodebook
from ..models.free_codebook import FreeCodebook
from ._arviz_compat import from_groups

__all__ = ["aggregate_posterior", "to_inference_data"]


def _per_point(site: dict, plate: str) -> Tensor:
    """A site's log-probability summed over every dim but the data plate's: ``(B,)``."""
    lp = site_log_prob(site)
    frame = plate_frame(site, plate)
    dim = lp.dim() + frame.dim
    other = [d for d in range(lp.dim()) if d != dim]
    return lp.sum(other) if other else lp


def _prior_codes(learned, num: int, generator: torch.Generator) -> np.ndarray:
    """``(num, d)`` draws from a learned model's prior on the codes ``z`` (standard normal when ``prior`` is None)."""
    if learned.prior is None:
        return torch.randn(num, learned.latent_dim, generator=generator).numpy()
    return learned.prior.sample((num,), generator=generator).detach().cpu().numpy()


def _learned(learned_model: Any, seed: int):
    if hasattr(learned_model, "learned_model"):  # a MethodSetup
        learned_model = learned_model.learned_model(seed=seed)
    for attr in ("sample", "prior", "latent_dim"):
        if not hasattr(learned_model, attr):
            raise TypeError(f"learned_model must be a LearnedModel or MethodSetup (with .{attr}), "
                            f"got {type(learned_model).__name__}; use setup.learned_model()")
    return learned_model


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    num_draws: int = 100,
    plate: str = "data",
    learned_model: Any = None,
    num_predictive: int = 100,
    seed: int = 0,
    **kwargs,
):
    """Draws from the guide, weights them under the model, and returns ArviZ data.

    The model and guide are run ``num_draws`` times with ``*args, **kwargs`` (use the full
    data set, e.g. ``batch_idx=None``); every sample site inside ``plate`` is recorded.

    Groups and variables (dims ``chain``, ``draw``, then ``obs`` for the data points):

    - ``posterior``: every latent site of the guide (for MAPA the index ``c``; for a VAE
      the code ``z`` with dims ``obs, z_dim``), and for a MAPA model with a
      :class:`~pyro_mapa.AmortizedCodebook` or :class:`~pyro_mapa.FreeCodebook` also
      ``code``, the drawn index's code :math:`z_{c_n}` (:math:`g_\\phi(x_{c_n})`, or the
      free code). Pooled over points these are draws from the aggregate posterior
      :math:`\\tfrac1N \\sum_n q(z \\mid x_n)`.
    - ``sample_stats``: ``log_weight``,
      :math:`\\log p(x_n, \\text{latent}) - \\log q(\\text{latent} \\mid x_n)`, the log
      importance weights behind the importance-sampled estimates (their Pareto k̂:
      :func:`~pyro_mapa.diagnostics.importance_diagnostics`); and ``log_lik_<site>``,
      :math:`\\log p(x_n \\mid \\text{latent})` for each observed site, the reconstruction term.
    - ``observed_data``: each observed site's data.
    - with ``learned_model``: ``posterior_predictive``, ``num_predictive`` replicate data
      sets of ``n`` points each drawn from the learned generative model (prior, decoder,
      likelihood), so ``az.plot_ppc(idata)`` asks whether the model generates the data;
      and ``prior``, draws from the learned prior with the shape of the code variable
      (``code`` or ``z``), to set against the aggregate posterior
      (:func:`aggregate_posterior`).

    There is deliberately **no** ``log_likelihood`` group, so ``az.loo`` raises
    ``TypeError`` instead of returning nonsense: the latents are one per point, drawn from
    a proposal, not posterior draws of parameters shared by all points, which is what
    PSIS-LOO assumes (see this module's docstring). Compare models on held-out data with
    :func:`~pyro_mapa.diagnostics.compare`.

    Example:
        >>> idata = to_inference_data(model, guide, None, num_draws=200,
        ...                           learned_model=setup.learned_model())  # doctest: +SKIP
        >>> az.plot_ppc(idata)  # doctest: +SKIP

    Arguments:
        num_draws: Guide draws per point.
        plate: Name of the data plate.
        learned_model: A :class:`~pyro_mapa.methods.LearnedModel` (or a
            ``MethodSetup``) for the ``posterior_predictive`` and ``prior`` groups.
        num_predictive: Replicate data sets in ``posterior_predictive``.
        seed: Seeds the predictive and prior draws (the guide draws use Pyro's RNG).

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or a ``DataTree`` (ArviZ 1.x).
    """
    for arg, value in (("num_draws", num_draws), ("num_predictive", num_predictive)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    posterior: dict[str, list] = {}
    log_lik: dict[str, list] = {}
    observed: dict[str, np.ndarray] = {}
    log_weights = []
    lent = isinstance(guide, MAPAGuide) and guide.model is None and guide.create_plates is None
    if lent:  # the guide follows the model's minibatch through the model given here
        guide.model = model
    try:
        traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num_draws)]
    finally:
        if lent:
            guide.model = None
    for guide_trace in traces:
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
                if isinstance(guide, MAPAGuide) and isinstance(
                    getattr(model, "codebook", None), (AmortizedCodebook, FreeCodebook)
                ):
                    posterior.setdefault("code", []).append(model.codebook.codes(site["value"]).cpu().numpy())
            lw = lp if lw is None else lw + lp
        if lw is None:
            raise ValueError(f"the model has no sample site inside plate {plate!r}")
        log_weights.append(lw.cpu().numpy())
    if not log_lik:
        raise ValueError(f"the model has no observed site inside plate {plate!r}")
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {k: np.stack(v)[None] for k, v in posterior.items()},
        "sample_stats": {"log_weight": np.stack(log_weights)[None],
                         **{f"log_lik_{k}": np.stack(v)[None] for k, v in log_lik.items()}},
        "observed_data": observed,
    }
    dims: dict[str, list[str]] = {"log_weight": ["obs"]}
    for k, v in groups["posterior"].items():
        dims[k] = ["obs"] + ([f"{k}_dim"] if v.ndim > 3 else [])
    for k in log_lik:
        dims[k] = ["obs"] + ([f"{k}_feature"] if observed[k].ndim > 1 else [])
        dims[f"log_lik_{k}"] = ["obs"]
    if learned_model is not None:
        groups.update(_generative_groups(_learned(learned_model, seed), groups["posterior"], observed,
                                         num_draws, num_predictive, seed))
    return from_groups(groups, dims=dims, coords={})


def _generative_groups(learned, posterior: dict, observed: dict, num_draws: int, num_predictive: int,
                       seed: int) -> dict[str, dict[str, np.ndarray]]:
    """``posterior_predictive`` (replicate data sets) and ``prior`` (code draws) from the learned model."""
    if len(observed) != 1:
        raise ValueError(f"learned_model needs exactly one observed site, the model has {sorted(observed)}")
    (name, x), = observed.items()
    n = x.shape[0]
    with torch.random.fork_rng(devices=[]):  # the likelihood's noise uses the global RNG; leave it as it was
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        draws = learned.sample(num_predictive * n, generator=g).cpu().numpy()
    if draws[0].size != x[0].size:
        raise ValueError(f"learned_model samples points of shape {draws.shape[1:]}, the observed site "
                         f"{name!r} has points of shape {x.shape[1:]}")
    groups = {"posterior_predictive": {name: draws.reshape((1, num_predictive) + x.shape).astype(x.dtype)}}
    code = "code" if "code" in posterior else next(
        (k for k, v in posterior.items() if v.ndim == 4 and v.shape[-1] == learned.latent_dim
         and np.issubdtype(v.dtype, np.floating)), None)
    if code is not None:
        z = _prior_codes(learned, num_draws * n, g).astype(posterior[code].dtype)
        groups["prior"] = {code: z.reshape(posterior[code].shape)}
    return groups


def aggregate_posterior(idata, var_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled code draws: the aggregate posterior (guide) and the learned prior, each ``(M, d)``.

    A generative model samples codes from its prior; the decoder was trained on codes from
    the aggregate posterior :math:`\\tfrac1N \\sum_n q(z \\mid x_n)`. Where the two differ
    (a VAE's "holes" in a standard-normal prior), samples from the model miss the data.
    Needs the ``prior`` group (``to_inference_data(..., learned_model=...)``).

    Arguments:
        idata: From :func:`to_inference_data`.
        var_name: The code variable (default: the one in the ``prior`` group).
    """
    try:
        prior = idata["prior"]
    except KeyError:
        raise ValueError("idata has no prior group: call to_inference_data(..., learned_model=setup.learned_model())"
                         ) from None
    names = list(prior.data_vars)
    var_name = names[0] if var_name is None else var_name
    if var_name not in names:
        raise ValueError(f"var_name {var_name!r} is not in the prior group; it has {names}")

    def flat(group) -> np.ndarray:
        v = np.asarray(idata[group][var_name].values)
        return v.reshape(-1, v.shape[-1]) if v.ndim == 4 else v.reshape(-1, 1)

    return flat("posterior"), flat("prior")
