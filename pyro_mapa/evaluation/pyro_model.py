"""Held-out log-likelihood of the user's own Pyro model, with a recovered prior in place of the site's.

After MAPA has trained a model empiricalized by :func:`~pyro_mapa.empiricalize`, the codes
:math:`z_i = g_\\phi(x_i)` are summarized by a recovered prior (a
:class:`~pyro_mapa.FlowPrior`, :class:`~pyro_mapa.KDEPrior`, or any distribution over the
site's event shape). :func:`with_prior` puts it in place of the site's prior *in the
original model* (a handler; the model's source is not changed), and
:class:`PyroModelJoint` reads the per-point log joint

.. math:: \\log p(x_n, z) = \\log \\tilde p(z) + \\sum_{\\text{observed sites in the plate}} \\log p(x_n \\mid z)

off one vectorized run of the model (all draws of ``z`` at once in a particle plate).
It plugs into the existing evaluators:

- :func:`model_importance_log_likelihood`: importance sampling with a fitted mixture
  proposal (:func:`~pyro_mapa.evaluation.fit_proposal`), any latent dimension; its
  log-weights feed :func:`~pyro_mapa.diagnostics.importance_diagnostics` (Pareto k̂);
- :func:`model_grid_log_likelihood`: the trapezoid rule on a grid, exact to quadrature
  accuracy for ``d <= 2``.

Global latent sites are not integrated over: condition them first (e.g.
``poutine.condition(model, {"W": W_mean})``), or evaluate another way. Observed sites
outside the data plate (a conditioned global among them) are not part of the per-point
log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor

from ..errors import check_nonnegative_int
from ..infer._pyro_compat import Messenger, site_is_subsample
from ..infer._tracing import plate_frame, reduce_to_particle_point, site_log_prob
from .fit_proposal import fit_proposal
from .importance import ImportanceEstimate, check_data, importance_from_log_joint
from .latent_posterior import latent_grid
from .proposal import MixtureProposal

__all__ = [
    "PyroModelJoint",
    "WithPriorMessenger",
    "model_grid_log_likelihood",
    "model_importance_log_likelihood",
    "with_prior",
]

_PARTICLES = "_eval_particles"
_MAX_ELEMENTS = 2**22


def _as_distribution(prior: Any) -> Any:
    """A Pyro distribution from a distribution or a recovered prior with ``.distribution()``."""
    if hasattr(prior, "distribution") and callable(prior.distribution):
        prior = prior.distribution()
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(
            "prior must be a distribution over the site's event shape or a recovered prior with .distribution() "
            f"(FlowPrior, KDEPrior), got {type(prior).__name__}"
        )
    return prior


class WithPriorMessenger(Messenger):
    """Replaces the distribution of sample site ``site`` by ``prior`` (expanded to the site's batch shape)."""

    def __init__(self, site: str, prior: Any) -> None:
        super().__init__()
        if not isinstance(site, str):
            raise TypeError(f"site must be the name (str) of the model's latent site, got {site!r}")
        self.site = site
        self.prior = _as_distribution(prior)
        self.seen = False

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] != self.site:
            return
        fn = msg["fn"]
        if tuple(self.prior.event_shape) != tuple(fn.event_shape):
            raise ValueError(
                f"the prior has event shape {tuple(self.prior.event_shape)} but the model's site {self.site!r} has "
                f"{tuple(fn.event_shape)}; recover the prior from codes of the site's shape"
            )
        msg["fn"] = self.prior.expand(fn.batch_shape)
        self.seen = True


def with_prior(model: Callable, site: str, prior: Any) -> Callable:
    """``model`` with its site ``site`` drawn from ``prior`` instead of its own prior.

    Arguments:
        model: The original Pyro model (not the empiricalized one).
        site: The latent site whose prior is replaced.
        prior: A distribution over the site's event shape, or a recovered prior with a
            ``distribution()`` method (:class:`~pyro_mapa.FlowPrior`, :class:`~pyro_mapa.KDEPrior`).
    """
    return WithPriorMessenger(site, prior)(model)


class PyroModelJoint:
    """Per-point :math:`\\log p(x_n, z)` of a Pyro model whose local latent ``site`` is set to ``z``.

    Called as ``joint(x, z)`` with ``x`` the ``(b, D)`` features of ``b`` points and ``z``
    of shape ``(..., b, d)``; returns ``(..., b)``. The model is run once per chunk of draws,
    with ``z`` in a particle plate left of the model's plates, on the arguments
    ``args_fn(x)``.

    Arguments:
        model: A Pyro model with one local latent site ``site`` inside plate ``plate``
            (global latents must be conditioned away first).
        site: The latent site.
        plate: The data plate's name.
        prior: Optional replacement prior for ``site`` (see :func:`with_prior`).
        args_fn: Maps the features ``x`` of a batch of points to the model's positional
            arguments (default ``(x,)``); e.g. ``lambda f: (f[:, :1], f[:, 1:])`` for a
            model ``model(inputs, targets)`` whose features are ``[inputs, targets]``.
    """

    def __init__(
        self,
        model: Callable,
        site: str,
        *,
        plate: str = "data",
        prior: Any = None,
        args_fn: Callable[[Tensor], Sequence[Any]] | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        self.model = model if prior is None else with_prior(model, site, prior)
        self.site = site
        self.plate = plate
        self.args_fn = args_fn if args_fn is not None else (lambda x: (x,))
        self._layout: tuple[int, int, torch.Size] | None = None  # (nesting, plate dim, event shape)

    def _inspect(self, x: Tensor) -> tuple[int, int, torch.Size]:
        """Traces the model once (unvectorized) for the plate dim, the plate nesting and the event shape."""
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*self.args_fn(x))
        if self.site not in trace.nodes or trace.nodes[self.site]["type"] != "sample":
            raise ValueError(f"the model has no sample site named {self.site!r}; site= must name its local latent")
        node = trace.nodes[self.site]
        frame = plate_frame(node, self.plate)
        if frame is None or frame.dim is None:
            raise ValueError(
                f"the model's site {self.site!r} is not inside a vectorized plate named {self.plate!r}; pass plate="
            )
        for name, other in trace.nodes.items():
            if other["type"] == "sample" and not other["is_observed"] and name != self.site and not site_is_subsample(other):
                raise ValueError(
                    f"the model has a latent site {name!r} besides {self.site!r}; condition it first "
                    f"(poutine.condition(model, data={{{name!r}: value}})) to evaluate log p(x | {name})"
                )
        dims = [f.dim for s in trace.nodes.values() if s["type"] == "sample" for f in s["cond_indep_stack"] if f.vectorized]
        return -min(dims), frame.dim, node["fn"].event_shape

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        if self._layout is None:
            self._layout = self._inspect(x)
        nesting, dim, event_shape = self._layout
        event = len(event_shape)
        lead = z.shape[: z.dim() - 1 - event]
        b = z.shape[len(lead)]
        if b != x.shape[0] or tuple(z.shape[len(lead) + 1 :]) != tuple(event_shape):
            raise ValueError(
                f"z has shape {tuple(z.shape)}; expected (..., {x.shape[0]}) + {tuple(event_shape)} for these points"
            )
        flat = z.reshape((-1, b) + tuple(event_shape))
        per_draw = max(1, _MAX_ELEMENTS // max(1, b * x[0].numel()))
        return torch.cat([self._run(x, flat[i : i + per_draw], nesting, dim) for i in range(0, flat.shape[0], per_draw)]).reshape(
            lead + (b,)
        )

    def _run(self, x: Tensor, z: Tensor, nesting: int, dim: int) -> Tensor:
        p, b = z.shape[:2]
        value = z.reshape((p,) + (1,) * (nesting + dim) + (b,) + (1,) * (-dim - 1) + tuple(z.shape[2:]))
        particles = pyro.plate(_PARTICLES, p, dim=-(nesting + 1))
        conditioned = poutine.condition(self.model, data={self.site: value})
        with poutine.block():
            trace = poutine.trace(particles(conditioned)).get_trace(*self.args_fn(x))
        total: Tensor | None = None
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if not site["is_observed"]:
                raise ValueError(
                    f"the model has a latent site {name!r} besides {self.site!r}; condition it first "
                    f"(poutine.condition(model, data={{{name!r}: value}})) to evaluate log p(x | {name})"
                )
            frame = plate_frame(site, self.plate)
            if frame is None:
                continue  # a conditioned global (or other observed site outside the plate): not per point
            term = reduce_to_particle_point(site_log_prob(site), -(nesting + 1), frame.dim, (p, b))
            total = term if total is None else total + term
        assert total is not None  # the site itself is always there
        return total


def model_importance_log_likelihood(
    joint: PyroModelJoint,
    x: Tensor,
    latent_dim: int,
    *,
    proposal: MixtureProposal | None = None,
    num_samples: int = 1000,
    fit_steps: int = 500,
    seed: int = 0,
    generator: torch.Generator | None = None,
    **fit_kwargs: Any,
) -> ImportanceEstimate:
    """Per-point importance-sampling estimate of :math:`\\log p(x_n)` for a Pyro model.

    Fits a :class:`~pyro_mapa.evaluation.MixtureProposal` to the model on ``x`` (unless
    ``proposal`` is given) and runs
    :func:`~pyro_mapa.evaluation.importance.importance_from_log_joint`. Check the
    returned log-weights with :func:`~pyro_mapa.diagnostics.importance_diagnostics`
    (Pareto k̂) before trusting the estimate.

    Arguments:
        joint: The model's :class:`PyroModelJoint` (with the recovered prior).
        x: ``(n, D)`` held-out features.
        latent_dim: ``d``, the site's event size (a vector site).
        proposal: A fitted proposal, or ``None`` to fit one with ``fit_steps`` Adam steps.
        num_samples: Importance samples per point.
        fit_steps, seed, fit_kwargs: Passed to :func:`~pyro_mapa.evaluation.fit_proposal`.
        generator: For the importance draws.
    """
    x = check_data(x)
    if proposal is None:
        proposal = fit_proposal(
            x, None, None, None, latent_dim, steps=check_nonnegative_int(fit_steps, "fit_steps"), seed=seed, joint=joint, **fit_kwargs
        )
    return importance_from_log_joint(x, joint, proposal, num_samples, chunk_size=max(num_samples, 2**14), generator=generator)


def model_grid_log_likelihood(
    joint: PyroModelJoint,
    x: Tensor,
    low: float | Sequence[float],
    high: float | Sequence[float],
    *,
    latent_dim: int = 1,
    num_points: int | None = None,
) -> Tensor:
    """Per-point :math:`\\log \\int p(x_n, z)\\, dz` by the trapezoid rule on ``[low, high]^d``, ``d = 1`` or ``2``.

    Exact to quadrature accuracy when the box holds essentially all of the mass of
    :math:`p(z)\\, p(x_n \\mid z)` and the grid resolves it (default 2001 nodes for
    ``d = 1``, 301 per axis for ``d = 2``; a KDE prior of bandwidth ``h`` needs a spacing
    well below ``h``).

    Returns:
        A ``(n,)`` float64 tensor.
    """
    x = check_data(x)
    grid = latent_grid(latent_dim, num_points, low, high, lambda z: torch.zeros(z.shape[:-1], dtype=z.dtype))
    nodes, log_cell = grid.z.to(x.dtype), grid.log_cell
    out = []
    with torch.no_grad():
        per_chunk = max(1, _MAX_ELEMENTS // max(1, x.numel()))
        for i in range(0, nodes.shape[0], per_chunk):
            z = nodes[i : i + per_chunk].unsqueeze(1).expand(-1, x.shape[0], -1)
            out.append(joint(x, z).to(torch.float64) + log_cell[i : i + per_chunk].unsqueeze(1))
    return torch.logsumexp(torch.cat(out), dim=0)
