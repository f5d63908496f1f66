"""``TraceIWAE_ELBO``: the importance-weighted bound, per data point, correct under minibatching."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import check_nonnegative_int
from ._importance_elbo import PerPointImportanceELBO, PerPointTerms, drop_negligible, negligible_log_ratio
from ._importance_sites import ImportanceTerms, ShareGlobals, detect_data_plate, importance_terms
from ._pyro_compat import VECTORIZED_PARTICLE_PLATE, get_importance_trace, get_traces, site_is_subsample

__all__ = ["TraceIWAE_ELBO", "drop_negligible", "negligible_log_ratio"]


class TraceIWAE_ELBO(PerPointImportanceELBO):
    """The IWAE bound with ``P`` importance samples per data point, a lower bound under minibatching.

    .. math::
        L = \\log\\frac{p(g)}{q(g)} + \\frac{N}{|B|} \\sum_{n \\in B} \\log \\frac1P \\sum_{p=1}^P
            \\frac{p_\\theta(x_n, z_{n,p} \\mid g)}{q_\\phi(z_{n,p} \\mid x_n, g)},
        \\qquad g \\sim q_\\phi(g),\\ z_{n,p} \\sim q_\\phi(\\cdot \\mid x_n, g).

    The sites are split by the *data plate* (``plate=``, or the outermost plate of the guide's
    latent sites; a ``ValueError`` asks for ``plate=`` when latent sites sit in different
    outermost plates):

    - **local** latent sites (inside the data plate) get ``P`` particles per point; every other
      plate around them is summed within the point, and the data plate's subsample scale
      multiplies each point's log-mean-exp, outside it. Pyro's ``RenyiELBO(alpha=0)`` puts the
      scale inside one joint logsumexp instead, so its subsampled estimate can exceed
      :math:`\\log p(X)` (pyro-ppl issues #2220, #3104; ``tests/infer/test_iwae_elbo.py``).
    - **global** latent sites ``g`` (outside the data plate) are drawn **once per step** from the
      guide and shared by all particles; their ``log p - log q`` is counted once. Each point's
      log-mean-exp is then a bound on :math:`\\log p(x_n \\mid g)` and, by Jensen,
      :math:`E_{q(g)}[\\log p(g)/q(g) + \\sum_n \\log p(x_n \\mid g)] \\le \\log p(X)`: a lower bound.
      Drawing ``g`` per particle instead would not be one (the points' particles would not
      share a ``g``).
    - observed sites outside the data plate are counted once (they should depend on globals
      only).
    - with **no data plate** (no latent site inside any plate) the bound is the ordinary IWAE
      over the whole trace: the log-mean-exp over particles of the total ``log p - log q``
      (with ``P > 1`` no site may then be in a subsampled plate: that estimate is not a bound).
      A model without latent sites gets exactly ``log p(x)``.

    The data plate may be a Python-loop plate (``for i in pyro.plate(...)``): each iteration
    is then one point, as Pyro declares the iterations conditionally independent. With one
    particle the value is ``Trace_ELBO``'s on the same draws. All latent sites must be
    reparameterizable (use ``Trace_ELBO``/``TraceGraph_ELBO`` otherwise). With ``P > 1`` a
    point may contain no other subsampled plate (that estimate is not a bound either).

    Arguments:
        num_particles: ``P >= 1``; ``P = 1`` is the standard ELBO.
        plate: Name of the data plate (default: the outermost plate of the guide's latent sites,
            found on the first call and checked on every call).
        dreg: Use the doubly-reparameterized gradient for the guide's parameters of local sites
            (in :meth:`loss_and_grads`): lower variance, and its signal-to-noise ratio does not
            vanish as ``P`` grows. Model parameters, and guide parameters that a global site's
            value or term depends on, get the usual IWAE gradient. :meth:`differentiable_loss`
            always gives the plain gradient.
        max_plate_nesting: As in Pyro (guessed when infinite, without consuming random numbers).

    References:
        | Importance Weighted Autoencoders (Burda, Grosse and Salakhutdinov, 2016)
        | https://arxiv.org/abs/1509.00519
        | Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives
        | (Tucker, Lawson, Gu and Maddison, 2019) https://arxiv.org/abs/1810.04152
    """

    _name = "IWAE"

    def __init__(
        self,
        num_particles: int = 10,
        *,
        plate: str | None = None,
        dreg: bool = False,
        max_plate_nesting: float = float("inf"),
        retain_graph: bool | None = None,
    ) -> None:
        if isinstance(num_particles, int) and not isinstance(num_particles, bool) and num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        num_particles = check_nonnegative_int(num_particles, "num_particles")
        if plate is not None and not isinstance(plate, str):
            raise TypeError(f"plate must be the name of the data plate (a str) or None, got {type(plate).__name__}")
        self.plate = plate
        self.dreg = bool(dreg)
        self._detected: str | None | object = _UNKNOWN
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            retain_graph=retain_graph,
        )

    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        with _rng_unchanged():  # the guess runs model and guide: keep the draws of the step itself
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _traces(self, model, guide, args, kwargs):
        """``(plate, model_trace, guide_trace)``: globals drawn once when there is a data plate."""
        plate = self.plate
        if plate is None:
            if self._detected is _UNKNOWN:
                # The first step finds the data plate from its own guide trace (sites outside every
                # plate shared); it is rerun with the same draws only when that sharing was wrong:
                # no data plate, or globals inside another plate. Usually no extra network pass.
                state = torch.get_rng_state()
                model_trace, guide_trace = next(get_traces(self, model, _sharing_globals(guide, None), args, kwargs))
                self._detected = detect_data_plate(guide_trace)
                if self._detected is not None and not _has_plated_globals(guide_trace, self._detected):
                    return self._detected, model_trace, guide_trace
                torch.set_rng_state(state)  # no data plate (whole-trace IWAE), or globals in other plates
            plate = self._detected
        for _ in range(3):
            run_guide = guide if plate is None else _sharing_globals(guide, plate)
            model_trace, guide_trace = next(get_traces(self, model, run_guide, args, kwargs))
            found = plate if self.plate is not None else detect_data_plate(guide_trace)
            if found == plate:
                return plate, model_trace, guide_trace
            plate = self._detected = found  # the structure changed since the last call: once more
        raise ValueError(
            f"the guide's data plate changes from call to call ({plate!r} last); pass TraceIWAE_ELBO(plate=...)"
        )

    def _terms(self, model, guide, args, kwargs, detach_guide_params: bool = False):
        """The :class:`ImportanceTerms` of one step's draws, and the traces."""
        plate, model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        p = self.num_particles
        particle_dim = -self.max_plate_nesting if p > 1 else -(self.max_plate_nesting + 1)
        terms = importance_terms(model_trace, guide_trace, plate, p, particle_dim, detach_guide_params)
        return terms, model_trace, guide_trace

    def _log_weights(self, model, guide, args, kwargs, detach_guide_params: bool = False):
        """Per-point log-weights ``(P, B)`` (or ``None``), theirs with ``q`` detached, scale, globals, traces."""
        terms, model_trace, guide_trace = self._terms(model, guide, args, kwargs, detach_guide_params)
        return terms.log_w, terms.log_w_dq, terms.scale, terms.global_lp, model_trace, guide_trace

    def _per_point(self, model, guide, args, kwargs, grads: bool = False) -> PerPointTerms:
        """Per-point log-weights, ``log P`` (a log-mean-exp), globals; the terms and traces as detail."""
        detach = grads and self.dreg  # DReG's copies of the log-weights, for loss_and_grads
        terms, model_trace, guide_trace = self._terms(model, guide, args, kwargs, detach_guide_params=detach)
        global_lp = torch.as_tensor(terms.global_lp)
        detail = (terms, model_trace, guide_trace)
        return PerPointTerms(terms.log_w, terms.scale, global_lp, math.log(self.num_particles), detail=detail)

    def _non_finite_detail(self, terms: PerPointTerms) -> str:
        bad_w = terms.log_w is not None and not bool(torch.isfinite(terms.log_w).all())
        return "log-weights are non-finite" if bad_w else "globals are non-finite"

    def _backward(self, loss: Tensor, terms: PerPointTerms) -> None:
        """The IWAE gradient; with ``dreg``, DReG's for the guide's parameters of local sites."""
        if not self.dreg or terms.log_w is None:
            super()._backward(loss, terms)
            return
        iw, model_trace, guide_trace = terms.detail
        guide_params = _params(guide_trace)
        plain = _depends_on(iw, guide_params)
        local = [t for t in guide_params if all(t is not u for u in plain)]
        model_params = [t for t in _params(model_trace) if all(t is not g for g in guide_params)] + plain
        # DReG (Tucker et al. 2019, Eq. 7): grad_phi = sum_p w~_p^2 d log w_p / dz_p dz_p / dphi,
        # with phi held fixed inside log q; model parameters keep the IWAE gradient.
        lw = iw.log_w.detach()
        w = torch.softmax(drop_negligible(lw), dim=0)
        # w² below eps² of the largest w² is dropped too (exact zeros, never subnormal).
        tiny_w2 = lw < lw.amax(dim=0, keepdim=True) - 0.5 * negligible_log_ratio(lw.dtype)
        surrogate_phi = -iw.scale * (w.pow(2).masked_fill(tiny_w2, 0.0) * iw.log_w_dq).sum()
        _accumulate(surrogate_phi, local, retain_graph=True)
        _accumulate(loss, model_params, retain_graph=bool(self.retain_graph))


_UNKNOWN = object()


def _rng_unchanged():
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


def _has_plated_globals(guide_trace, plate: str) -> bool:
    """Whether the guide has a latent site outside plate ``plate`` but inside another (not yet shared) plate."""
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        names = {f.name for f in site["cond_indep_stack"]} - {VECTORIZED_PARTICLE_PLATE}
        if names and plate not in names:
            return True
    return False


def _sharing_globals(guide, plate: str | None):
    def run(*args, **kwargs):
        with ShareGlobals(plate):
            return guide(*args, **kwargs)

    return run


def _depends_on(terms: ImportanceTerms, params: list[Tensor]) -> list[Tensor]:
    """The parameters among ``params`` that a global site's value or term depends on (plain gradient)."""
    roots = [v for v in terms.global_values if isinstance(v, Tensor) and v.requires_grad]
    if isinstance(terms.global_lp, Tensor) and terms.global_lp.requires_grad:
        roots.append(terms.global_lp)
    if not roots or not params:
        return []
    total = sum(r.sum() for r in roots)
    grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    return [t for t, g in zip(params, grads) if g is not None]


def _params(trace) -> list[Tensor]:
    out: list[Tensor] = []
    for site in trace.nodes.values():
        if site["type"] == "param":
            t = site["value"].unconstrained()
            if t.requires_grad and all(t is not u for u in out):
                out.append(t)
    return out


def _accumulate(loss: Tensor, params: list[Tensor], retain_graph: bool) -> None:
    if not params:
        return
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            continue
        p.grad = g if p.grad is None else p.grad + g
