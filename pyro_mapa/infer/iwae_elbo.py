"""``TraceIWAE_ELBO``: the importance-weighted bound, per data point, correct under minibatching."""

from __future__ import annotations

import math

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..errors import NonFiniteLossError, check_count
from ._pyro_compat import (
    VECTORIZED_PARTICLE_PLATE,
    QuietNestingGuess,
    detach_distribution,
    get_importance_trace,
    get_traces,
)
from ._tracing import plate_frame, reduce_to_particle_point, same_scale, scalar_scale, site_log_prob

__all__ = ["TraceIWAE_ELBO", "drop_negligible", "negligible_log_ratio"]


def negligible_log_ratio(dtype: torch.dtype) -> float:
    """``-2 log eps``: how far (in nats) below a point's largest log-weight a weight stops mattering.

    A particle whose normalized weight is below :math:`\\epsilon^2` (float32: 1.4e-14, a gap of
    31.9 nats; float64: 72.1 nats) changes neither the bound nor its gradient at the dtype's
    precision, yet in the backward pass its weight times the likelihood's gradient becomes
    a subnormal number once the gap exceeds about 87 nats (float32), and subnormal operands
    make the matrix products of the networks' backward pass many times slower on CPUs
    without hardware support for them.
    """
    return -2.0 * math.log(torch.finfo(dtype).eps)


def drop_negligible(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log_w`` with ``-inf`` where :math:`w / \\max w < \\epsilon^2` along ``dim`` (no host sync).

    .. math:: \\tilde\\ell_p = \\ell_p \\text{ if } \\ell_p \\ge \\max_q \\ell_q - 2\\log(1/\\epsilon), \\quad -\\infty \\text{ otherwise.}

    The logsumexp of the result equals that of ``log_w`` to within a relative
    :math:`P\\epsilon^2` of the sum, and the gradient reaching a dropped entry is an
    exact zero (``masked_fill``), so no subnormal weight enters the backward pass. NaN
    entries are kept (they propagate as before); a slice whose maximum is ``-inf`` is
    left unchanged.
    """
    with torch.no_grad():
        floor = log_w.amax(dim=dim, keepdim=True) - negligible_log_ratio(log_w.dtype)
        drop = log_w < floor
    return log_w.masked_fill(drop, -math.inf)


class TraceIWAE_ELBO(QuietNestingGuess, ELBO):
    """The IWAE bound with ``P`` importance samples per data point, a lower bound under minibatching.

    .. math::
        L = \\frac{N}{|B|} \\sum_{n \\in B} \\log \\frac1P \\sum_{p=1}^P
            \\frac{p_\\theta(x_n, z_{n,p})}{q_\\phi(z_{n,p} \\mid x_n)},
        \\qquad z_{n,p} \\sim q_\\phi(\\cdot \\mid x_n).

    The subsample scale multiplies each point's log-mean-exp, outside it. Pyro's
    ``RenyiELBO(alpha=0)`` instead puts the scale inside one joint logsumexp over
    the minibatch, so its subsampled estimate can exceed :math:`\\log p(X)`
    (pyro-ppl issues #2220, #3104; ``tests/test_iwae_elbo.py`` shows it).

    All latent sites must be local (inside the data plate) and reparameterizable.
    Observed sites outside the data plate are counted once.

    Arguments:
        num_particles: ``P >= 1``; ``P = 1`` is the standard ELBO.
        plate: Name of the data plate (default: the outermost plate shared by every
            latent site).
        dreg: Use the doubly-reparameterized gradient for the guide's parameters
            (in :meth:`loss_and_grads`): lower variance, and its signal-to-noise ratio
            does not vanish as ``P`` grows. Model parameters get the usual IWAE
            gradient. :meth:`differentiable_loss` always gives the plain gradient.
        max_plate_nesting: As in Pyro (guessed when infinite).

    References:
        | Importance Weighted Autoencoders (Burda, Grosse and Salakhutdinov, 2016)
        | https://arxiv.org/abs/1509.00519
        | Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives
        | (Tucker, Lawson, Gu and Maddison, 2019) https://arxiv.org/abs/1810.04152
    """

    def __init__(
        self,
        num_particles: int = 10,
        *,
        plate: str | None = None,
        dreg: bool = False,
        max_plate_nesting: float = float("inf"),
        retain_graph: bool | None = None,
    ) -> None:
        num_particles = check_count(num_particles, "num_particles")
        if num_particles < 1:
            raise ValueError("num_particles must be >= 1")
        self.plate = plate
        self.dreg = bool(dreg)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            retain_graph=retain_graph,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _data_plate(self, guide_trace) -> str:
        if self.plate is not None:
            return self.plate
        stacks = [
            [f.name for f in reversed(site["cond_indep_stack"]) if f.name != VECTORIZED_PARTICLE_PLATE]
            for site in guide_trace.nodes.values()
            if site["type"] == "sample"
        ]
        common = [name for name in (stacks[0] if stacks else []) if all(name in s for s in stacks)]
        if not common:
            raise ValueError(
                "could not find a data plate shared by every latent site; pass "
                "TraceIWAE_ELBO(plate=<name of the data plate>)"
            )
        return common[0]

    def _log_weights(self, model, guide, args, kwargs, detach_guide_params: bool = False):
        """Per-point log-weights ``(P, B)``, the plate scale, globals, and the traces."""
        (model_trace, guide_trace) = next(get_traces(self, model, guide, args, kwargs))
        plate = self._data_plate(guide_trace)
        p = self.num_particles
        particle_dim = -self.max_plate_nesting if p > 1 else -(self.max_plate_nesting + 1)
        log_w = None
        log_w_dq = None
        global_lp = 0.0
        plate_scale = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            frame = plate_frame(site, plate)
            lp = site_log_prob(site)
            if frame is None:
                if not site["is_observed"]:
                    raise ValueError(
                        f"latent site {name!r} is outside the data plate {plate!r}; TraceIWAE_ELBO "
                        "needs every latent site to be local to a data point"
                    )
                global_lp = global_lp + scalar_scale(site) * reduce_to_particle_point(
                    lp, particle_dim, None, (p,)
                ).mean()
                continue
            batch = frame.size
            scale = scalar_scale(site)
            if plate_scale is None:
                plate_scale = scale
            elif not same_scale(scale, plate_scale):
                raise ValueError(f"all sites in plate {plate!r} must share one scale (site {name!r} differs)")
            term = reduce_to_particle_point(lp, particle_dim, frame.dim, (p, batch))
            term_dq = term
            if not site["is_observed"]:
                g_site = guide_trace.nodes[name]
                if not g_site["fn"].has_rsample:
                    raise ValueError(
                        f"guide site {name!r} is not reparameterizable; TraceIWAE_ELBO needs "
                        "reparameterized guide sites (for discrete latents use RenyiELBO or enumeration)"
                    )
                q = reduce_to_particle_point(site_log_prob(g_site), particle_dim, frame.dim, (p, batch))
                term = term - q
                if detach_guide_params:
                    q_sg = detach_distribution(g_site["fn"]).log_prob(g_site["value"])
                    q_sg = reduce_to_particle_point(
                        q_sg, particle_dim, frame.dim, (p, batch)
                    )
                    term_dq = term_dq - q_sg
            log_w = term if log_w is None else log_w + term
            log_w_dq = term_dq if log_w_dq is None else log_w_dq + term_dq
        if log_w is None:
            raise ValueError(f"the model has no sample site inside plate {plate!r}")
        scale = 1.0 if plate_scale is None else plate_scale
        return log_w, log_w_dq, scale, global_lp, model_trace, guide_trace

    def _estimate_from(self, log_w: Tensor, scale, global_lp) -> Tensor:
        # Weights below eps² of a point's largest are dropped: same bound to the dtype's
        # precision, and no subnormal weight reaches the backward matrix products.
        per_point = torch.logsumexp(drop_negligible(log_w), dim=0) - math.log(self.num_particles)
        return scale * per_point.sum() + global_lp

    @staticmethod
    def _raise_non_finite(value: float, log_w: Tensor) -> None:
        detail = "log-weights are non-finite" if not bool(torch.isfinite(log_w).all()) else "globals are non-finite"
        raise NonFiniteLossError(f"the IWAE loss is {value}; {detail}")

    def _checked_value(self, loss: Tensor, log_w: Tensor) -> float:
        """``float(loss)``, raising :class:`NonFiniteLossError` if it is not finite: one host sync."""
        value = float(loss.detach())
        if not math.isfinite(value):
            self._raise_non_finite(value, log_w)
        return value

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """Minus the IWAE bound, a differentiable scalar (plain reparameterized gradient).

        Checks that the loss is finite, which reads it on the host (one sync).
        """
        log_w, _, scale, global_lp, _, _ = self._log_weights(model, guide, args, kwargs)
        loss = -self._estimate_from(log_w, scale, global_lp)
        self._checked_value(loss, log_w)
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_w, _, scale, global_lp, _, _ = self._log_weights(model, guide, args, kwargs)
            return self._checked_value(-self._estimate_from(log_w, scale, global_lp), log_w)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound as a float (the step's one host sync, also its finiteness check); gradients accumulated."""
        if not self.dreg:
            log_w, _, scale, global_lp, _, _ = self._log_weights(model, guide, args, kwargs)
            loss = -self._estimate_from(log_w, scale, global_lp)
            value = self._checked_value(loss, log_w)
            if loss.requires_grad:
                loss.backward(retain_graph=self.retain_graph)
            return value
        log_w, log_w_dq, scale, global_lp, model_trace, guide_trace = self._log_weights(
            model, guide, args, kwargs, detach_guide_params=True
        )
        loss = -self._estimate_from(log_w, scale, global_lp)
        value = self._checked_value(loss, log_w)
        guide_params = _params(guide_trace)
        model_params = [t for t in _params(model_trace) if all(t is not g for g in guide_params)]
        # DReG (Tucker et al. 2019, Eq. 7): grad_phi = sum_p w~_p^2 d log w_p / dz_p dz_p / dphi,
        # with phi held fixed inside log q; model parameters keep the IWAE gradient.
        lw = log_w.detach()
        w = torch.softmax(drop_negligible(lw), dim=0)
        # w² below eps² of the largest w² is dropped too (exact zeros, never subnormal).
        tiny_w2 = lw < lw.amax(dim=0, keepdim=True) - 0.5 * negligible_log_ratio(lw.dtype)
        surrogate_phi = -scale * (w.pow(2).masked_fill(tiny_w2, 0.0) * log_w_dq).sum()
        _accumulate(surrogate_phi, guide_params, retain_graph=True)
        _accumulate(loss, model_params, retain_graph=bool(self.retain_graph))
        return value


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
