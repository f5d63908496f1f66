"""``TraceInfoVAE_ELBO``: the InfoVAE objective (ELBO with a weighted KL plus an MMD term), minibatch-correct."""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..errors import NonFiniteLossError, check_positive_int
from ._pyro_compat import QuietNestingGuess, get_importance_trace

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_KERNEL",
    "DEFAULT_LAMBDA",
    "TraceInfoVAE_ELBO",
    "imq_kernel",
    "mmd_u_statistic",
    "rbf_kernel",
]

KernelFn = Callable[[Tensor, Tensor, float], Tensor]

#: The defaults of :class:`TraceInfoVAE_ELBO`, also the ``"InfoVAE"`` method's in the registry
#: (:data:`pyro_mapa.methods.DEFAULT_OPTIONS`). α = 1 drops the KL term's mutual
#: information penalty (the paper's MMD-VAE); λ = 10 weights the MMD by α + λ − 1 = 10.
DEFAULT_ALPHA = 1.0
DEFAULT_LAMBDA = 10.0
DEFAULT_KERNEL = "imq"
DEFAULT_BANDWIDTH = 1.0


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``‖x_i − y_j‖²`` for ``x`` ``(..., n, d)`` and ``y`` ``(..., m, d)``: a ``(..., n, m)`` tensor.

    Built from explicit differences (not ``‖x‖² + ‖y‖² − 2x·y``), so it is exact, non-negative
    and has a finite gradient at zero distance.
    """
    return (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)


def rbf_kernel(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """Gaussian (RBF) kernel matrix :math:`k(a, b) = \\exp(-\\lVert a-b\\rVert^2 / (2h^2))`.

    Arguments:
        x: ``(..., n, d)``.
        y: ``(..., m, d)``.
        bandwidth: ``h > 0``.

    Returns:
        ``(..., n, m)``.
    """
    return torch.exp(-_squared_distances(x, y) / (2.0 * bandwidth**2))


def imq_kernel(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """Inverse multiquadric kernel :math:`k(a, b) = C / (C + \\lVert a-b\\rVert^2)`, :math:`C = 2 d h^2`.

    ``d`` is the feature dimension (``x.shape[-1]``); ``C = 2 d h²`` is the expected squared
    distance between two independent draws of :math:`\\mathcal N(0, h^2 I_d)`
    (Tolstikhin et al., "Wasserstein Auto-Encoders", 2018). Its heavy tails keep a gradient
    for codes far from the prior, where the RBF kernel's vanishes.

    Arguments:
        x: ``(..., n, d)``.
        y: ``(..., m, d)``.
        bandwidth: ``h > 0``.

    Returns:
        ``(..., n, m)``.
    """
    c = 2.0 * x.shape[-1] * bandwidth**2
    return c / (c + _squared_distances(x, y))


_KERNELS: dict[str, KernelFn] = {"imq": imq_kernel, "rbf": rbf_kernel}


def _check_kernel(kernel: str | KernelFn) -> KernelFn:
    if callable(kernel):
        return kernel
    if isinstance(kernel, str) and kernel.lower() in _KERNELS:
        return _KERNELS[kernel.lower()]
    raise ValueError(
        f"unknown kernel {kernel!r}; use kernel='imq' or kernel='rbf' (or a callable k(x, y, h))"
    )


def _check_bandwidth(bandwidth: float) -> float:
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, Real):
        raise TypeError(f"bandwidth must be a real number, got {type(bandwidth).__name__}")
    bandwidth = float(bandwidth)
    if not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth}")
    return bandwidth


def _off_diagonal_mean(k: Tensor) -> Tensor:
    n = k.shape[-1]
    return (k.sum((-2, -1)) - k.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def mmd_u_statistic(x: Tensor, y: Tensor, kernel: str | KernelFn = "imq", bandwidth: float = 1.0) -> Tensor:
    """The unbiased estimate (U-statistic) of the squared maximum mean discrepancy.

    .. math::
        \\mathrm{MMD}^2_u = \\frac{1}{n(n-1)} \\sum_{i \\ne j} k(x_i, x_j)
            + \\frac{1}{m(m-1)} \\sum_{i \\ne j} k(y_i, y_j)
            - \\frac{2}{nm} \\sum_{i, j} k(x_i, y_j),

    whose expectation is exactly :math:`\\mathrm{MMD}^2(P, Q)` for i.i.d. :math:`x_i \\sim P`,
    :math:`y_j \\sim Q` (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, Lemma 6).
    It can be negative.

    Arguments:
        x: ``(..., n, d)`` samples, ``n >= 2`` (a 1-D tensor is read as ``(n, 1)``).
        y: ``(..., m, d)`` samples, ``m >= 2``; leading dims broadcast with ``x``'s.
        kernel: ``"imq"``, ``"rbf"`` or a callable ``k(x, y, bandwidth) -> (..., n, m)``.
        bandwidth: ``h > 0``.

    Returns:
        A tensor of the leading (batch) shape; a scalar for 2-D inputs.
    """
    k = _check_kernel(kernel)
    h = _check_bandwidth(bandwidth)
    x = x.unsqueeze(-1) if x.dim() == 1 else x
    y = y.unsqueeze(-1) if y.dim() == 1 else y
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature dim, got {x.shape[-1]} and {y.shape[-1]}")
    for name, t in (("x", x), ("y", y)):
        if t.shape[-2] < 2:
            raise ValueError(f"{name} needs at least 2 samples for the U-statistic, got {t.shape[-2]}")
    return _off_diagonal_mean(k(x, x, h)) + _off_diagonal_mean(k(y, y, h)) - 2.0 * k(x, y, h).mean((-2, -1))


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class TraceInfoVAE_ELBO(QuietNestingGuess, ELBO):
    """The InfoVAE objective (Zhao, Song and Ermon, AAAI 2019) as a Pyro loss, correct under minibatching.

    To maximise, as a data-set sum over :math:`N` points:

    .. math::
        \\sum_{n=1}^N \\Big(\\mathbb E_q \\log p(x_n \\mid z_n)
            - (1-\\alpha)\\,\\mathrm{KL}(q(z_n \\mid x_n) \\,\\|\\, p(z_n))\\Big)
        - N(\\alpha + \\lambda - 1)\\,\\mathrm{MMD}^2(q_{\\rm agg}, p).

    The loss (to minimise) uses one draw :math:`z_n \\sim q(z \\mid x_n)` per point of the
    minibatch :math:`B`:

    .. math::
        \\frac{N}{|B|}\\sum_{n \\in B}\\Big(-\\log p(x_n \\mid z_n)
            + (1-\\alpha)\\big(\\log q(z_n \\mid x_n) - \\log p(z_n)\\big)\\Big)
        + N(\\alpha + \\lambda - 1)\\,\\mathrm{MMD}^2_u\\big(\\{z_n\\}_{n \\in B}, \\{z'_m\\}_{m=1}^M\\big),

    with :math:`z'_m` drawn from the model's prior at the latent site. The per-point part is
    scaled by each site's own scale, exactly as ``Trace_ELBO`` (so ``alpha=0, lambda_=1`` *is*
    ``Trace_ELBO`` on the same draws), and :math:`N` is read off the trace as
    :math:`|B| \\times` the latent site's scale, so λ means the same at every batch size.

    What it estimates. With the minibatch drawn uniformly without replacement (as
    :func:`~pyro_mapa.training.fit` does), the per-point part is unbiased for its full-data
    sum, and :math:`\\mathrm{MMD}^2_u` (:func:`mmd_u_statistic`) has expectation

    .. math::
        \\frac{1}{N(N-1)} \\sum_{n \\ne m} \\mathbb E\\, k(z_n, z_m) + \\mathbb E\\, k(z', z'')
            - \\frac{2}{N} \\sum_n \\mathbb E\\, k(z_n, z'), \\qquad z_n \\sim q(z \\mid x_n),\\ z', z'' \\sim p,

    the same for every batch size: the loss is an unbiased estimate of the full-batch
    (:math:`B = N`) loss. It is *not* unbiased for :math:`N(\\alpha+\\lambda-1)\\,\\mathrm{MMD}^2(q_{\\rm agg}, p)`,
    whose first term also counts the pairs :math:`n = m` (two independent draws from one
    :math:`q(z \\mid x_n)`): the loss's expectation is lower by
    :math:`\\frac{N(\\alpha+\\lambda-1)}{N-1}\\big(\\frac1N \\sum_n \\mathbb E\\, k(z_n, z_n') - \\frac1{N^2}\\sum_{n,m} \\mathbb E\\, k(z_n, z_m')\\big)`,
    a term of order 1 next to an MMD part of order :math:`N`.
    InfoVAE is not a bound on :math:`\\log p(x)`; evaluate models by exact log-likelihood.

    Requirements: exactly one latent sample site, inside the data plate (vectorized), with a
    reparameterizable guide distribution; observed sites may be anywhere (each is counted
    with its own scale, as in ``Trace_ELBO``). Codes are the latent's values flattened per
    data point. Prior draws: ``ceil(M / |B|)`` samples of the latent site's (plate-expanded)
    prior ``fn``, sample-major, the first ``M`` kept; so a prior that depends on the data
    point is sampled as the minibatch's mixture. Prior draws carry no reparameterized
    gradient (``fn.sample``). They are drawn after all particles' traces, so the traces use
    the same random numbers as ``Trace_ELBO``'s. When ``alpha + lambda_ == 1`` the MMD term
    is skipped (no prior draws, any batch size).

    Arguments:
        alpha: α <= 1 (default 1, the paper's MMD-VAE): the KL weight is ``1 − α``. Above 1 the
            weight is negative and the loss rewards :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z))` without
            bound (a guide shrinking to a point mass drives it to −∞), so it is refused. α < 0
            (penalising the mutual information more than the ELBO does) is allowed.
        lambda_: λ > 0 (default 10), as the paper requires: the MMD weight is ``α + λ − 1``.
            ``alpha=0, lambda_=1`` is exactly ``Trace_ELBO`` (use that instead). The defaults are
            the registry's ``"InfoVAE"`` settings (:data:`DEFAULT_ALPHA`, :data:`DEFAULT_LAMBDA`).
        kernel: ``"imq"`` (default; :func:`imq_kernel`), ``"rbf"`` (:func:`rbf_kernel`) or a
            callable ``k(x, y, bandwidth)``.
        bandwidth: Kernel bandwidth ``h > 0`` (the prior's scale is a good default; 1 for N(0, I)).
        num_prior_samples: ``M >= 2`` prior draws per particle (default: the batch size).
        num_particles: Independent particles averaged (each a fresh minibatch of codes).
        max_plate_nesting: As in Pyro.
        plate: Name of the data plate (default: the latent site's outermost plate).
        retain_graph: As in Pyro.

    References:
        | InfoVAE: Balancing Learning and Inference in Variational Autoencoders
        | (Zhao, Song and Ermon, AAAI 2019) https://arxiv.org/abs/1706.02262
        | A Kernel Two-Sample Test (Gretton et al., JMLR 2012)
    """

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        lambda_: float = DEFAULT_LAMBDA,
        *,
        kernel: str | KernelFn = DEFAULT_KERNEL,
        bandwidth: float = DEFAULT_BANDWIDTH,
        num_prior_samples: int | None = None,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        plate: str | None = None,
        retain_graph: bool | None = None,
    ) -> None:
        self.alpha = _check_real(alpha, "alpha")
        self.lambda_ = _check_real(lambda_, "lambda_")
        if self.alpha > 1:
            raise ValueError(
                f"alpha must be <= 1 (the KL weight is 1 - alpha; above 1 the loss rewards KL(q(z|x) || p(z)) "
                f"and is unbounded below), got {self.alpha}; alpha=1 is the MMD-VAE"
            )
        if self.lambda_ <= 0:
            raise ValueError(
                f"lambda_ must be > 0 (InfoVAE needs a positive weight on the divergence; the MMD weight is "
                f"alpha + lambda_ - 1), got {self.lambda_}; e.g. lambda_={DEFAULT_LAMBDA}"
            )
        self.kernel = _check_kernel(kernel)
        self.bandwidth = _check_bandwidth(bandwidth)
        if num_prior_samples is not None and check_positive_int(num_prior_samples, "num_prior_samples") < 2:
            raise ValueError(
                f"num_prior_samples must be >= 2 (the U-statistic needs pairs), got {num_prior_samples}"
            )
        self.num_prior_samples = num_prior_samples
        if plate is not None and not isinstance(plate, str):
            raise TypeError(f"plate must be the name of the data plate (a str), got {type(plate).__name__}")
        self.plate = plate
        super().__init__(
            num_particles=check_positive_int(num_particles, "num_particles"),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=False,
            retain_graph=retain_graph,
        )

    def _get_trace(self, model, guide, args, kwargs):
        """One particle: the guide's trace and the model replayed against it, log-probs computed."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    @property
    def mmd_weight(self) -> float:
        """``α + λ − 1``, the weight of ``N·MMD²`` in the loss."""
        return self.alpha + self.lambda_ - 1.0

    def _latent(self, model_trace, guide_trace):
        """The latent site's name and its data-plate frame; raises if the model does not fit."""
        latents = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
        if not latents:
            raise ValueError(
                "the model has no latent sample site; TraceInfoVAE_ELBO needs exactly one latent "
                "site (the code z) inside the data plate"
            )
        plate = self.plate
        if plate is None:
            stacks = [model_trace.nodes[n]["cond_indep_stack"] for n in latents]
            plated = [stack for stack in stacks if stack]
            if not plated:
                raise ValueError(
                    f"latent site {latents[0]!r} is not inside any plate; TraceInfoVAE_ELBO needs it "
                    "inside the data plate (`with pyro.plate('data', N, subsample=...)`)"
                )
            plate = plated[0][0].name  # the outermost plate of the first plated latent
        frames = {}
        for name in latents:
            frame = next((f for f in model_trace.nodes[name]["cond_indep_stack"] if f.name == plate), None)
            if frame is None:
                raise ValueError(
                    f"latent site {name!r} is outside the data plate {plate!r}; TraceInfoVAE_ELBO needs "
                    "its single latent site inside the data plate (pass plate=<name> if this is not it)"
                )
            frames[name] = frame
        if len(latents) > 1:
            raise ValueError(
                f"the model has more than one latent site in the data plate {plate!r} ({latents}); "
                "TraceInfoVAE_ELBO supports a single latent code site"
            )
        name = latents[0]
        frame = frames[name]
        if name not in guide_trace.nodes:
            raise ValueError(f"the guide has no sample site {name!r}; it must sample the model's latent site")
        if frame.dim is None:
            raise ValueError(f"plate {plate!r} must be vectorized (use `with pyro.plate(...)`, not a loop)")
        if not guide_trace.nodes[name]["fn"].has_rsample:
            raise ValueError(
                f"guide site {name!r} is not reparameterizable; TraceInfoVAE_ELBO needs reparameterized "
                "codes (the MMD term is differentiated through them)"
            )
        return name, frame

    def _particle_loss(self, model_trace, guide_trace, prior_draws: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The three loss terms of one particle: reconstruction, (1 − α)·KL part, MMD part."""
        name, frame = self._latent(model_trace, guide_trace)
        site = model_trace.nodes[name]
        obs = sum(
            s["log_prob_sum"]
            for s in model_trace.nodes.values()
            if s["type"] == "sample" and s["is_observed"]
        )
        log_q = sum(s["log_prob_sum"] for s in guide_trace.nodes.values() if s["type"] == "sample")
        recon = -obs if isinstance(obs, Tensor) else site["log_prob_sum"].new_tensor(-float(obs))
        kl = (1.0 - self.alpha) * (log_q - site["log_prob_sum"])
        if not prior_draws:
            return recon, kl, torch.zeros_like(recon)
        codes = _codes(site["value"], len(site["fn"].event_shape), frame)
        batch = codes.shape[0]
        if batch < 2:
            raise ValueError(
                f"the minibatch of plate {frame.name!r} has {batch} point; the MMD U-statistic needs "
                "at least 2 (use a larger batch, or alpha + lambda_ == 1 to drop the MMD term)"
            )
        scale = site["scale"]
        if isinstance(scale, Tensor):
            if scale.numel() != 1:
                raise ValueError(
                    f"latent site {name!r} has a non-scalar scale; TraceInfoVAE_ELBO needs a scalar one"
                )
            scale = scale.reshape(())
        size = batch * scale  # N: B times the subsample scale N / B
        m = self.num_prior_samples or batch
        with torch.no_grad():
            draws = site["fn"].sample((math.ceil(m / batch),))
        prior = _codes(draws, len(site["fn"].event_shape), frame, sample_dims=1)[:m]
        mmd = mmd_u_statistic(codes, prior.to(codes.dtype), self.kernel, self.bandwidth)
        return recon, kl, size * self.mmd_weight * mmd

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The InfoVAE loss (to minimise), a differentiable scalar averaged over particles."""
        traces = [self._get_trace(model, guide, args, kwargs) for _ in range(self.num_particles)]
        prior_draws = self.mmd_weight != 0.0
        loss = 0.0
        for model_trace, guide_trace in traces:
            terms = self._particle_loss(model_trace, guide_trace, prior_draws)
            total = terms[0] + terms[1] + terms[2]
            if not bool(torch.isfinite(total)):
                bad = [
                    n for n, t in zip(("reconstruction", "KL", "MMD"), terms) if not bool(torch.isfinite(t))
                ]
                raise NonFiniteLossError(
                    f"the InfoVAE loss is {float(total.detach())}; non-finite term(s): {', '.join(bad)}"
                )
            loss = loss + total / self.num_particles
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The InfoVAE loss as a float (no gradient)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The InfoVAE loss; accumulates its gradient into the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


def _codes(value: Tensor, event_dim: int, frame, sample_dims: int = 0) -> Tensor:
    """Per-data-point code vectors ``(S·B, F)`` from a site value ``sample + batch + event`` shaped."""
    axis = value.dim() - event_dim + frame.dim
    if axis < sample_dims or value.shape[axis] != frame.size:
        raise ValueError(
            f"the latent value (shape {tuple(value.shape)}) has no dim of size {frame.size} for plate "
            f"{frame.name!r} at dim {frame.dim}; sample the latent inside the plate"
        )
    value = value.movedim(axis, sample_dims)
    return value.reshape(value.shape[: sample_dims + 1].numel(), -1)
