"""``HamiltonianGuide``: the Hamiltonian VAE (Caterini, Doucet and Sejdinovic, 2018) as a Pyro guide.

A flow guided by the target. Draw :math:`z_0 \\sim q_\\phi(z \\mid x)` (reparameterised) and
:math:`\\gamma \\sim \\mathcal N(0, I)`; set the momentum :math:`\\rho_0 = \\gamma / \\sqrt{\\beta_0}`.
Then take ``K`` leapfrog steps of the potential :math:`U(z) = -\\log p_\\theta(x, z)` with per-dimension
step sizes :math:`\\varepsilon`, each followed by a tempering of the momentum::

    ρ ← ρ − (ε/2) ∇U(z);   z ← z + ε ρ;   ρ ← ρ − (ε/2) ∇U(z);   ρ ← √(β_{k−1}/β_k) · ρ

with :math:`1/\\sqrt{\\beta_k} = (1 - 1/\\sqrt{\\beta_0})\\, k^2/K^2 + 1/\\sqrt{\\beta_0}`, so
:math:`\\beta_K = 1`. As in the paper :math:`\\beta_0 \\in (0, 1]`: the momentum starts hot
(variance :math:`1/\\beta_0`) and is cooled (each factor is :math:`\\le 1`). Leapfrog shears preserve
volume; the tempering scales the ``d`` momentum coordinates by :math:`\\sqrt{\\beta_0}` in all, so the
map has Jacobian :math:`\\beta_0^{d/2}`. The guide emits :math:`z_K` as a ``Delta`` whose log-density is

.. math::
    \\log q_\\phi(z_0 \\mid x) + \\log \\mathcal N(\\rho_0; 0, \\beta_0^{-1} I) - \\tfrac d2 \\log \\beta_0
    - \\log \\mathcal N(\\rho_K; 0, I)
    = \\log q_\\phi(z_0 \\mid x) + \\tfrac12 (\\lVert \\rho_K \\rVert^2 - \\lVert \\gamma \\rVert^2),

so :class:`pyro.infer.Trace_ELBO` returns the HVAE bound and :class:`~pyro_mapa.TraceIWAE_ELBO` its
importance-weighted version, unchanged.

Reference: Hamiltonian Variational Auto-Encoder (Caterini, Doucet and Sejdinovic, NeurIPS 2018),
https://arxiv.org/abs/1805.11328
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor, nn

from ..errors import NonFiniteLossError, check_nonnegative_int, check_positive_int
from ..models.vae import check_same_data
from ._pyro_compat import get_plates

__all__ = [
    "DEFAULT_BETA0",
    "DEFAULT_NUM_LEAPFROG",
    "DEFAULT_STEP_SIZE",
    "DEFAULT_TEMPERING",
    "HamiltonianGuide",
    "leapfrog_flow",
    "tempering_schedule",
]

TEMPERINGS = ("none", "fixed", "learned")
#: The defaults of :class:`HamiltonianGuide`, also the ``"HVAE"`` method's in the registry
#: (:data:`pyro_mapa.methods.DEFAULT_OPTIONS`): 5 leapfrog steps of initial size 0.1,
#: learned tempering from β₀ = 0.5 (the paper's best variant; β₀ = 1 when ``tempering="none"``).
DEFAULT_NUM_LEAPFROG = 5
DEFAULT_STEP_SIZE = 0.1
DEFAULT_TEMPERING = "learned"
DEFAULT_BETA0 = 0.5
StepSize = float | Sequence[float] | Tensor


def tempering_schedule(beta0: Tensor, num_steps: int) -> Tensor:
    """The inverse temperatures :math:`\\beta_0, \\dots, \\beta_K` of the HVAE's quadratic schedule.

    .. math:: 1/\\sqrt{\\beta_k} = (1 - 1/\\sqrt{\\beta_0})\\, k^2 / K^2 + 1/\\sqrt{\\beta_0},

    so :math:`\\beta_K = 1` (for ``K = 0`` the schedule is just ``(β₀,)``).

    Arguments:
        beta0: Scalar tensor :math:`\\beta_0 > 0` (differentiable); the HVAE uses
            :math:`\\beta_0 \\in (0, 1]`, a hot start cooled to :math:`\\beta_K = 1`.
        num_steps: ``K >= 0``.

    Returns:
        A ``(K + 1,)`` tensor in ``beta0``'s dtype and device.
    """
    num_steps = check_nonnegative_int(num_steps, "num_steps")
    beta0 = torch.as_tensor(beta0)
    if num_steps == 0:
        return beta0.reshape(1)
    k = torch.arange(num_steps + 1, dtype=beta0.dtype, device=beta0.device)
    s0 = beta0.rsqrt()
    return ((1 - s0) * (k / num_steps) ** 2 + s0).pow(-2)


def leapfrog_flow(
    z0: Tensor, rho0: Tensor, grad_U: Callable[[Tensor], Tensor], step_size: Tensor, betas: Tensor
) -> tuple[Tensor, Tensor]:
    """The HVAE map :math:`(z_0, \\rho_0) \\mapsto (z_K, \\rho_K)`: ``len(betas) - 1`` tempered leapfrogs.

    Each step is ``ρ ← ρ − (ε/2)∇U(z); z ← z + ερ; ρ ← ρ − (ε/2)∇U(z); ρ ← √(β_{k−1}/β_k)·ρ``. The
    gradient at the end of one step is reused at the start of the next, so ``grad_U`` is called
    ``K + 1`` times (never for ``K = 0``). Whatever ``grad_U`` is, as long as it depends on ``z``
    alone the three leapfrog updates are shears of unit Jacobian, so
    :math:`\\log|\\det J| = \\tfrac d2 \\log(\\beta_0/\\beta_K)`.

    Arguments:
        z0, rho0: ``(..., d)`` position and momentum.
        grad_U: ``(..., d) -> (..., d)``, the gradient of the potential, point by point.
        step_size: ``ε``, broadcastable to ``(..., d)``.
        betas: ``(K + 1,)`` inverse temperatures (see :func:`tempering_schedule`).
    """
    z, rho = z0, rho0
    num_steps = betas.shape[0] - 1
    if num_steps == 0:
        return z, rho
    g = grad_U(z)
    for k in range(1, num_steps + 1):
        rho = rho - 0.5 * step_size * g
        z = z + step_size * rho
        g = grad_U(z)
        rho = rho - 0.5 * step_size * g
        rho = rho * (betas[k - 1] / betas[k]).sqrt()
    return z, rho


class _FlowParameters(nn.Module):
    """The flow's parameters: step sizes ``ε = 0.5·sigmoid(r_ε)`` and, if learned, ``β₀ = sigmoid(r_β)``."""

    def __init__(self, step_size: Tensor, learn_step_size: bool, beta0: float, tempering: str) -> None:
        super().__init__()
        raw_step = torch.logit(2 * step_size)
        if learn_step_size:
            self.raw_step_size = nn.Parameter(raw_step)
        else:
            self.register_buffer("raw_step_size", raw_step)
        self.learned_beta0 = tempering == "learned"
        value = torch.tensor(beta0, dtype=step_size.dtype, device=step_size.device)
        if self.learned_beta0:  # β₀ = sigmoid(r): a smooth map onto (0, 1)
            self.raw_beta0 = nn.Parameter(torch.logit(value))
        else:
            self.register_buffer("fixed_beta0", value)

    def step_size(self) -> Tensor:
        return 0.5 * torch.sigmoid(self.raw_step_size)

    def beta0(self) -> Tensor:
        if self.learned_beta0:
            return torch.sigmoid(self.raw_beta0)
        return self.fixed_beta0


def _check_step_size(step_size: StepSize, latent_dim: int, like: Tensor) -> Tensor:
    try:
        eps = torch.as_tensor(step_size, dtype=like.dtype if like.is_floating_point() else None)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"step_size must be a float or a length-{latent_dim} sequence, got {step_size!r}"
        ) from e
    eps = eps.detach().clone().to(like.device)
    if eps.dim() > 1 or (eps.dim() == 1 and eps.numel() != latent_dim):
        raise ValueError(
            f"step_size must be a scalar or have shape ({latent_dim},), got shape {tuple(eps.shape)}"
        )
    if not bool(torch.all((eps > 0) & (eps < 0.5))):
        raise ValueError(
            f"step_size must lie in the open interval (0, 0.5) (the sigmoid map's range), got {step_size!r}"
        )
    return eps.expand(latent_dim).clone()


def _check_beta0(beta0: float | None, tempering: str, num_leapfrog: int) -> float:
    if tempering not in TEMPERINGS:
        raise ValueError(f"tempering must be one of {TEMPERINGS}, got {tempering!r}")
    if beta0 is None:
        beta0 = 1.0 if tempering == "none" else DEFAULT_BETA0
    beta0 = float(beta0)
    if not math.isfinite(beta0) or not 0 < beta0 <= 1:
        raise ValueError(
            f"beta0 must lie in (0, 1] (the initial inverse temperature: a hot start, cooled to β_K = 1, "
            f"as in Caterini et al.), got {beta0}"
        )
    if tempering == "none" and beta0 != 1:
        raise ValueError(
            f"tempering='none' fixes beta0 = 1, got beta0={beta0}; use tempering='fixed' or 'learned'"
        )
    if tempering == "learned" and beta0 == 1:
        raise ValueError(
            "tempering='learned' needs 0 < beta0 < 1 (β₀ = sigmoid(r) reaches 1 only in the limit); "
            "pass e.g. beta0=0.5"
        )
    if num_leapfrog == 0 and beta0 != 1:
        raise ValueError(
            "tempering with beta0 < 1 needs num_leapfrog >= 1 (the schedule must end at β_K = 1); "
            "for num_leapfrog=0 (the mean-field guide) pass tempering='none'"
        )
    return beta0


class HamiltonianGuide(nn.Module):
    """The HVAE guide: a mean-field base, then ``K`` tempered leapfrog steps of :math:`U = -\\log p(x, z)`.

    Emits ``site`` as ``Delta(z_K, log_density, event_dim=1)`` inside plate ``plate`` (see the module
    docstring for the density), so ``Trace_ELBO`` gives the HVAE bound and ``TraceIWAE_ELBO`` its
    importance-weighted version. The potential's gradient is taken point by point from the user's own
    model, run (hidden from the outer trace) as ``trace(condition(model, {site: z, plate: idx}))`` with
    the guide's ``batch_idx``; only sample sites inside ``plate`` count (they are summed over any nested
    plates, unscaled, masks applied). Gradients use ``create_graph=True`` while autograd is on, so θ, φ,
    ε and β₀ all get gradients of the bound.

    Cost: ``K + 1`` gradient evaluations (a decoder forward and backward each, ``K >= 1``), every one
    counted by the model's own ``decoder_passes``; the ELBO's model run adds one more forward.

    Robustness: with ``check_finite`` (default) a non-finite ``∇U`` or log-density raises
    :class:`~pyro_mapa.NonFiniteLossError` (a ``ValueError``) naming the step, at the price of one host
    sync per call. ``max_grad_norm`` clips each point's ``∇U`` to that norm; the clipped field still
    depends on ``z`` alone, so the flow keeps its Jacobian and the bound stays a valid lower bound.

    Arguments:
        encoder: ``(…, D) -> (…, 2d)``: location and pre-softplus scale of :math:`q_\\phi(z_0 \\mid x)`,
            as in :class:`~pyro_mapa.MeanFieldGuide`.
        model: The model (e.g. :class:`~pyro_mapa.VAEModel`), called as ``model(batch_idx)``. It is
            referenced, not registered as a submodule (so ``guide.to(...)`` does not move it).
        latent_dim: ``d``.
        data: ``(N, D)`` observations, the model's: when the model holds its data (``model.data``,
            as :class:`~pyro_mapa.VAEModel`), the same tensor or equal values, else a ``ValueError``.
        num_leapfrog: ``K >= 0`` (default 5); ``K = 0`` with ``tempering="none"`` is the mean-field guide.
        step_size: Initial ``ε`` in ``(0, 0.5)``, a float or ``(d,)`` (default 0.1).
        beta0: Initial inverse temperature β₀ ∈ (0, 1] (must be 1 for ``tempering="none"``, < 1 for
            ``"learned"``, where β₀ = sigmoid(r)). β₀ < 1 starts hot and cools, as in the paper.
            Default ``None``: 0.5, or 1 for ``tempering="none"``.
        tempering: ``"learned"`` (default; β₀ learned), ``"fixed"`` (constant β₀) or ``"none"`` (β₀ = 1).
            The defaults are the registry's ``"HVAE"`` settings (:data:`DEFAULT_NUM_LEAPFROG` and the others).
        learn_step_size: Learn ``ε`` (per dimension) or keep it fixed.
        site, plate: Names of the model's latent site and data plate.
        max_grad_norm: ``None`` or a positive clip on each point's ``‖∇U‖``.
        check_finite: Raise on a non-finite gradient or log-density.
    """

    def __init__(
        self,
        encoder: nn.Module,
        model: Callable,
        *,
        latent_dim: int,
        data: Tensor,
        num_leapfrog: int = DEFAULT_NUM_LEAPFROG,
        step_size: StepSize = DEFAULT_STEP_SIZE,
        beta0: float | None = None,
        tempering: str = DEFAULT_TEMPERING,
        learn_step_size: bool = True,
        site: str = "z",
        plate: str = "data",
        max_grad_norm: float | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if not callable(model):
            raise TypeError(f"model must be callable (a Pyro model), got {type(model).__name__}")
        if not isinstance(data, Tensor) or data.dim() < 1 or len(data) == 0:
            raise ValueError("data must be a non-empty (N, ...) tensor of observations")
        model_data = getattr(model, "data", None)
        if isinstance(model_data, Tensor):
            check_same_data(data, model_data, "HamiltonianGuide",
                            "HamiltonianGuide(encoder, model, latent_dim=d, data=X)")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.num_leapfrog = check_nonnegative_int(num_leapfrog, "num_leapfrog")
        self.tempering = tempering
        beta0 = _check_beta0(beta0, tempering, self.num_leapfrog)
        if max_grad_norm is not None and not (
            math.isfinite(float(max_grad_norm)) and float(max_grad_norm) > 0
        ):
            raise ValueError(f"max_grad_norm must be None or a positive finite number, got {max_grad_norm}")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        like = data if data.is_floating_point() else torch.empty(0, device=data.device)
        eps = _check_step_size(step_size, self.latent_dim, like)
        self.encoder = encoder
        self.flow = _FlowParameters(eps, bool(learn_step_size), beta0, tempering)
        self.register_buffer("data", data)
        self._model = (model,)  # a tuple, so nn.Module does not register the model's parameters twice
        self.site, self.plate = str(site), str(plate)
        self.check_finite = bool(check_finite)
        self.encoder_passes = 0
        self.gradient_evaluations = 0

    @property
    def model(self) -> Callable:
        """The model whose log joint drives the flow."""
        return self._model[0]

    @property
    def step_size(self) -> Tensor:
        """Current per-dimension step sizes ``ε ∈ (0, 0.5)^d``."""
        return self.flow.step_size()

    @property
    def beta0(self) -> Tensor:
        """Current initial inverse temperature β₀ (1 for ``tempering="none"``)."""
        return self.flow.beta0()

    def distribution(self, x: Tensor) -> dist.TorchDistribution:
        """The base :math:`q_\\phi(z_0 \\mid x)`, exactly :class:`~pyro_mapa.MeanFieldGuide`'s."""
        out = self.encoder(x)
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder must output 2*latent_dim = {2 * self.latent_dim} numbers, got {out.shape[-1]}"
            )
        loc, raw_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)

    def _batch_shape(self, size: int) -> tuple[tuple[int, ...], int]:
        """The batch shape the data plate will give ``site`` under the enclosing plates, and its dim."""
        frames = [f for f in get_plates() if f.dim is not None]
        if any(f.name == self.plate for f in frames):
            raise ValueError(
                f"HamiltonianGuide was called inside a plate named {self.plate!r}; it opens that plate itself"
            )
        used = {f.dim for f in frames}
        dim = -1
        while dim in used:  # Pyro gives a new plate the rightmost free dim
            dim -= 1
        shape = [1] * max([-dim] + [-f.dim for f in frames])
        for f in frames:
            shape[f.dim] = f.size
        shape[dim] = size
        return tuple(shape), dim

    def log_joint(self, z: Tensor, batch_idx: Tensor | None, idx: Tensor) -> Tensor:
        """Per-point :math:`\\log p_\\theta(x_n, z_n)` from the model (batch-shaped, not scaled)."""
        conditioned = poutine.condition(self.model, data={self.site: z, self.plate: idx})
        with poutine.block():
            trace = poutine.trace(conditioned).get_trace(batch_idx)
        if self.site not in trace.nodes or trace.nodes[self.site]["type"] != "sample":
            raise ValueError(
                f"the model has no sample site {self.site!r}; pass site=<the model's latent site>"
            )
        total = None
        for name, msg in trace.nodes.items():
            if msg["type"] != "sample":
                continue
            in_plate = any(f.name == self.plate for f in msg["cond_indep_stack"])
            if not in_plate:
                if name == self.site:
                    raise ValueError(
                        f"the model's site {self.site!r} is not inside a plate named {self.plate!r}"
                    )
                continue  # global sites and the plate's own subsample site
            lp = msg["fn"].log_prob(msg["value"])
            mask = msg["mask"]
            if mask is not None:
                lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, lp.new_zeros(()))
            for f in msg["cond_indep_stack"]:  # sum plates nested inside the data plate
                if f.name != self.plate and f.dim is not None and lp.dim() >= -f.dim:
                    lp = lp.sum(f.dim, keepdim=True)
            total = lp if total is None else total + lp
        return total

    def transform(
        self, z0: Tensor, rho0: Tensor, batch_idx: Tensor | None = None, flags: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The guide's flow :math:`(z_0, \\rho_0) \\mapsto (z_K, \\rho_K)` at the points ``batch_idx``.

        ``z0`` and ``rho0`` have shape ``(..., B, d)``; ∇U comes from the model at those points (clipped
        when ``max_grad_norm`` is set). Each evaluation's finiteness is appended to ``flags`` if given.
        """
        idx = torch.arange(len(self.data), device=self.data.device) if batch_idx is None else batch_idx
        shape = tuple(z0.shape[:-1])
        create_graph = torch.is_grad_enabled()

        evaluations = [0]

        def grad_U(z: Tensor) -> Tensor:
            with torch.enable_grad():
                z_in = z if z.requires_grad else z.detach().requires_grad_(True)
                try:
                    logp = self.log_joint(z_in, batch_idx, idx)
                except ValueError as e:  # e.g. Pyro's validation of a NaN location; sync on this path only
                    if bool(torch.isfinite(z).all()):
                        raise
                    raise NonFiniteLossError(
                        f"the leapfrog diverged: z is non-finite at gradient evaluation {evaluations[0]} of "
                        f"{self.num_leapfrog + 1} (∇U overflowed: the decoder saturates or step_size is too "
                        "large); lower step_size, or pass max_grad_norm=<a norm> to clip ∇U"
                    ) from e
                evaluations[0] += 1
                if torch.broadcast_shapes(logp.shape, shape) != shape:
                    raise ValueError(
                        f"the model's log joint has batch shape {tuple(logp.shape)}, expected {shape}: the "
                        f"model's plate {self.plate!r} must take the guide's dim (give it no explicit dim)"
                    )
                (g,) = torch.autograd.grad(logp.sum(), z_in, create_graph=create_graph, allow_unused=True)
            self.gradient_evaluations += z[..., 0].numel()
            g = torch.zeros_like(z) if g is None else -g
            if flags is not None:
                flags.append(torch.isfinite(g).all())
            if self.max_grad_norm is not None:  # still a function of z alone: the flow keeps its Jacobian
                norm = g.norm(dim=-1, keepdim=True)
                g = g * (self.max_grad_norm / norm.clamp_min(self.max_grad_norm))
            return g

        betas = tempering_schedule(self.flow.beta0().to(z0), self.num_leapfrog)
        return leapfrog_flow(z0, rho0, grad_U, self.flow.step_size().to(z0), betas)

    def forward(self, batch_idx: Tensor | None = None) -> Tensor:
        """Draws :math:`z_K` and emits it at ``site``; takes the model's arguments."""
        pyro.module("encoder", self.encoder)
        pyro.module("hamiltonian_flow", self.flow)
        n = len(self.data)
        x = self.data if batch_idx is None else self.data[batch_idx]
        self.encoder_passes += x.shape[0]
        shape, data_dim = self._batch_shape(x.shape[0])
        q0 = self.distribution(x).expand(shape)
        z0 = q0.rsample()
        gamma = torch.randn_like(z0)
        rho0 = gamma * self.flow.beta0().to(z0).rsqrt()
        flags: list[Tensor] | None = [] if self.check_finite else None
        z_k, rho_k = self.transform(z0, rho0, batch_idx, flags)
        # log q(z0) + log N(ρ0; 0, β0⁻¹I) − (d/2) log β0 − log N(ρK; 0, I), simplified (exact 0 for K = 0)
        log_density = q0.log_prob(z0) + 0.5 * (rho_k.pow(2).sum(-1) - gamma.pow(2).sum(-1))
        if flags is not None:
            self._raise_if_non_finite(flags + [torch.isfinite(log_density).all()])
        with pyro.plate(self.plate, n, subsample=batch_idx):
            frame = next(f for f in get_plates() if f.name == self.plate)
            if frame.dim != data_dim:
                raise ValueError(f"plate {self.plate!r} took dim {frame.dim}, expected {data_dim}")
            return pyro.sample(self.site, dist.Delta(z_k, log_density=log_density, event_dim=1))

    def _raise_if_non_finite(self, flags: list[Tensor]) -> None:
        ok = torch.stack(flags)
        if bool(ok.all()):  # the one host sync of the check
            return
        first = int((~ok).nonzero()[0, 0])
        if first < len(flags) - 1:
            raise NonFiniteLossError(
                f"∇U = −∇z log p(x, z) is non-finite at gradient evaluation {first} of {len(flags) - 1} "
                "(the decoder saturates or the leapfrog diverges); lower step_size, or pass "
                "max_grad_norm=<a norm> to clip ∇U (a volume-preserving guard)"
            )
        raise NonFiniteLossError(
            "the HVAE log-density is non-finite (log q(z0|x) from the encoder, or the final momentum "
            "overflowed); lower step_size or pass max_grad_norm=<a norm>"
        )
