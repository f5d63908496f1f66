"""``TraceIWAE_ELBO``: the importance-weighted bound, per data point, correct under minibatching."""

from __future__ import annotations

import math

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..errors import NonFiniteLossError, check_count
from ._pyro_compat import VECTORIZED_PARTICLE_PLATE, detach_distribution, get_importance_trace, get_traces
from ._tracing import plate_frame, reduce_to_particle_point, same_scale, scalar_scale, site_log_prob

__all__ = ["TraceIWAE_ELBO"]


class TraceIWAE_ELBO(ELBO):
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
        per_point = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return scale * per_point.sum() + global_lp

    @staticmethod
    def _check_finite(loss: Tensor, log_w: Tensor) -> None:
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(
                f"the IWAE loss is {float(loss.detach())}; "
                + ("log-weights are non-finite" if not bool(torch.isfinite(log_w).all()) else "globals are non-finite")
            )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """Minus the IWAE bound, a differentiable scalar (plain reparameterized gradient)."""
        log_w, _, scale, global_lp, _, _ = self._log_weights(model, guide, args, kwargs)
        loss = -self._estimate_from(log_w, scale, global_lp)
        self._check_finite(loss, log_w)
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if not self.dreg:
            loss = self.differentiable_loss(model, guide, *args, **kwargs)
            if loss.requires_grad:
                loss.backward(retain_graph=self.retain_graph)
            return float(loss.detach())
        log_w, log_w_dq, scale, global_lp, model_trace, guide_trace = self._log_weights(
            model, guide, args, kwargs, detach_guide_params=True
        )
        loss = -self._estimate_from(log_w, scale, global_lp)
        self._check_finite(loss, log_w)
        guide_params = _params(guide_trace)
        model_params = [t for t in _params(model_trace) if all(t is not g for g in guide_params)]
        # DReG (Tucker et al. 2019, Eq. 7): grad_phi = sum_p w~_p^2 d log w_p / dz_p dz_p / dphi,
        # with phi held fixed inside log q; model parameters keep the IWAE gradient.
        w = torch.softmax(log_w.detach(), dim=0)
        surrogate_phi = -scale * (w.pow(2) * log_w_dq).sum()
        _accumulate(surrogate_phi, guide_params, retain_graph=True)
        _accumulate(loss, model_params, retain_graph=bool(self.retain_graph))
        return float(loss.detach())


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
