"""Log-likelihood evaluators (METHOD.md §7).

- Exact: the empiricalized model by enumeration, 1-D latent models by quadrature.
- Any latent dimension: importance sampling with a fitted amortized proposal,
  :func:`fit_proposal` then :func:`importance_log_likelihood`, which reports a
  Monte-Carlo standard error and keeps the log-weights for diagnostics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .baselines import mlp
from .codebook import AmortizedCodebook
from .likelihoods import Likelihood, NormalLikelihood
from .mapa_elbo import NonFiniteLossError
from .posterior_table import _check_count

__all__ = [
    "ImportanceEstimate",
    "MixtureProposal",
    "Proposal",
    "empirical_log_likelihood",
    "fit_proposal",
    "gauss_legendre_grid",
    "grid_log_likelihood",
    "importance_log_likelihood",
    "quadrature_log_likelihood",
    "stratified_iwae_bound",
]


def _log_mixture(
    x: Tensor, params: Tensor, log_w: Tensor | None, likelihood: Likelihood, max_elements: int = 2**24
) -> Tensor:
    """``logsumexp_g [log_w[g] + log p(x_n | params[g])]`` per point, in blocks of at most ``max_elements``.

    Blocks run over both the points and the mixture components, so memory stays bounded
    (about ``max_elements`` likelihood terms at a time) whatever the grid or data size.
    A Gaussian likelihood takes a matrix-multiply path in float64
    (``||x - μ||² = ||x||² + ||μ||² - 2 x·μ``): one GEMM per block instead of a
    ``(G, b, D)`` tensor.
    """
    if isinstance(likelihood, NormalLikelihood) and params.dim() == 2:
        return _log_mixture_normal(x, params, log_w, likelihood.sigma, max_elements)
    g, d = params.shape[0], max(1, x[0].numel())
    g_chunk = min(g, max(1, max_elements // d))
    x_chunk = max(1, max_elements // (g_chunk * d))
    out = []
    for xs in range(0, x.shape[0], x_chunk):
        xb = x[xs : xs + x_chunk].unsqueeze(0)
        acc = None
        for gs in range(0, g, g_chunk):
            lp = likelihood(params[gs : gs + g_chunk].unsqueeze(1)).log_prob(xb)  # (g_chunk, b)
            if log_w is not None:
                lp = lp + log_w[gs : gs + g_chunk].unsqueeze(1)
            part = torch.logsumexp(lp, dim=0)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out)


def _log_mixture_normal(x: Tensor, means: Tensor, log_w: Tensor | None, sigma: float, max_elements: int) -> Tensor:
    x64, mu = x.to(torch.float64).reshape(len(x), -1), means.to(torch.float64)
    d = mu.shape[1]
    const = -d * math.log(sigma * math.sqrt(2 * math.pi))
    mu_sq = (mu * mu).sum(1)
    g_chunk = min(len(mu), max(1, max_elements // 64))
    x_chunk = max(1, max_elements // g_chunk)
    out = []
    for xs in range(0, len(x64), x_chunk):
        xb = x64[xs : xs + x_chunk]
        xb_sq = (xb * xb).sum(1, keepdim=True)
        acc = None
        for gs in range(0, len(mu), g_chunk):
            d2 = (xb_sq + mu_sq[gs : gs + g_chunk].unsqueeze(0) - 2 * xb @ mu[gs : gs + g_chunk].T).clamp(min=0)
            lp = const - d2 / (2 * sigma**2)  # (b, g_chunk)
            if log_w is not None:
                lp = lp + log_w[gs : gs + g_chunk].to(torch.float64).unsqueeze(0)
            part = torch.logsumexp(lp, dim=1)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out).to(x.dtype)


def empirical_log_likelihood(
    codebook: AmortizedCodebook,
    likelihood: Likelihood,
    x: Tensor | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """Per-point exact log marginal likelihood of the empiricalized model (Eq. 4-6).

    .. math:: \\log p(x_n) = \\log \\sum_{i=1}^N \\tfrac1N\\, p_\\theta(x_n \\mid f_\\theta(g_\\phi(x_i)))

    All ``N`` codes are decoded once; the ``len(x) × N`` likelihood terms are
    enumerated in chunks of ``chunk_size`` query points. Differentiable.

    Arguments:
        codebook: Encoder, decoder and the ``N`` training points.
        likelihood: The observation model.
        x: Query points (default: the training points themselves).
        chunk_size: Query points per block (fewer when a block would exceed 2^24 terms).

    Returns:
        A ``(len(x),)`` tensor.
    """
    params = codebook.decoder(codebook.codes())  # (N, ...)
    n = params.shape[0]
    x = codebook.data if x is None else x
    budget = min(2**24, chunk_size * n * x[0].numel())
    return _log_mixture(x, params, None, likelihood, max_elements=budget) - math.log(n)


def gauss_legendre_grid(
    num_points: int = 2001, low: float = -8.0, high: float = 8.0, dtype=torch.float64
) -> tuple[Tensor, Tensor]:
    """Nodes ``u`` and log-weights ``log(w · φ(u))`` for :math:`\\int g(u)\\,\\mathcal N(u; 0, 1)\\,du`.

    A composite trapezoid rule on ``[low, high]``: with a smooth integrand and a fine
    grid it is exact to numerical precision (the Gaussian tail beyond ±8 is below 1e-15).
    """
    u = torch.linspace(low, high, num_points, dtype=dtype)
    h = (high - low) / (num_points - 1)
    w = torch.full_like(u, h)
    w[0] = w[-1] = h / 2
    log_w = w.log() - 0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    return u, log_w


def quadrature_log_likelihood(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    num_points: int = 2001,
    low: float = -8.0,
    high: float = 8.0,
    chunk_size: int = 512,
) -> Tensor:
    """Per-point :math:`\\log \\int p(x \\mid \\mathrm{decode}(u))\\,\\mathcal N(u; 0, 1)\\,du` for a 1-D latent ``u``.

    ``decode`` maps ``(G, 1)`` standard-normal nodes to likelihood parameters; a
    recovered prior enters through it (e.g. ``decoder(copula.transform(u))``).

    Returns:
        A ``(len(x),)`` tensor in ``x.dtype``.
    """
    u, log_w = gauss_legendre_grid(num_points, low, high)
    u = u.to(x.device, x.dtype).unsqueeze(-1)
    log_w = log_w.to(x.device, x.dtype)
    with torch.no_grad():
        params = decode(u)  # (G, ...)
    return _log_mixture(x, params, log_w, likelihood, max_elements=min(2**24, chunk_size * len(log_w) * x[0].numel()))


# ---------------------------------------------------------------------------
# Importance sampling for any latent dimension (METHOD.md §7, App. D.1).
# ---------------------------------------------------------------------------


def grid_log_likelihood(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    low: Sequence[float],
    high: Sequence[float],
    num_points: int = 401,
    chunk_size: int = 256,
) -> Tensor:
    """Per-point :math:`\\log \\int p(x \\mid \\mathrm{decode}(z))\\, p(z)\\, dz` by the trapezoid rule on a grid, ``d = 1`` or ``2``.

    ``log_prior`` is the (normalized) log density of the prior on ``z``; the grid
    ``[low, high]`` must hold essentially all of its mass (the integrand is smooth, so
    a fine grid is exact to numerical precision). Use :func:`quadrature_log_likelihood`
    for a standard-normal prior in 1-D.

    Arguments:
        low, high: Per-dimension bounds (length ``d``).
        num_points: Nodes per dimension (``num_points**d`` in all).

    Returns:
        A ``(len(x),)`` tensor in ``x.dtype``.
    """
    d = len(low)
    if d not in (1, 2) or len(high) != d:
        raise ValueError("grid quadrature supports latent dimension 1 or 2 (low and high of equal length)")
    axes, log_w1 = [], []
    for lo, hi in zip(low, high):
        if not hi > lo:
            raise ValueError(f"need high > low on every dimension, got {lo} and {hi}")
        u = torch.linspace(lo, hi, num_points, dtype=x.dtype, device=x.device)
        w = torch.full_like(u, (hi - lo) / (num_points - 1))
        w[0] = w[-1] = w[0] / 2
        axes.append(u)
        log_w1.append(w.log())
    if d == 1:
        z, log_w = axes[0].unsqueeze(-1), log_w1[0]
    else:
        za, zb = torch.meshgrid(axes[0], axes[1], indexing="ij")
        z = torch.stack([za.reshape(-1), zb.reshape(-1)], -1)
        log_w = (log_w1[0].unsqueeze(1) + log_w1[1].unsqueeze(0)).reshape(-1)
    with torch.no_grad():
        log_w = log_w + log_prior(z)
        params = decode(z)
    return _log_mixture(x, params, log_w, likelihood, max_elements=min(2**24, chunk_size * len(log_w) * x[0].numel()))


class ImportanceEstimate(NamedTuple):
    """Result of :func:`importance_log_likelihood`, per data point.

    Attributes:
        log_px: ``(n,)`` estimates :math:`\\log \\hat p(x) = \\log \\frac1S \\sum_s w_s`.
        stderr: ``(n,)`` Monte-Carlo standard errors of ``log_px`` (delta method).
        log_weights: ``(n, S)`` raw log-weights :math:`\\log w_s` (e.g. for a
            Pareto-:math:`\\hat k` diagnostic), or ``None`` if not kept.
    """

    log_px: Tensor
    stderr: Tensor
    log_weights: Tensor | None

    @property
    def ess(self) -> Tensor:
        """``(n,)`` effective sample sizes :math:`(\\sum_s w_s)^2 / \\sum_s w_s^2` (needs ``log_weights``)."""
        if self.log_weights is None:
            raise ValueError("the log-weights were not kept (keep_log_weights=False)")
        lw = self.log_weights
        return torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))


class Proposal(Protocol):
    """What :func:`importance_log_likelihood` needs from a proposal :math:`q(z \\mid x)`.

    ``sample(x, num_samples, generator)`` returns ``(num_samples, n, d)`` draws for the
    ``(n, D)`` points ``x``; ``log_prob(z, x)`` returns ``(num_samples, n)``
    log-densities of such draws. :class:`MixtureProposal` implements it; so can any
    fixed distribution that ignores ``x``.
    """

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor: ...


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MixtureProposal(nn.Module):
    """An amortized mixture of ``K`` diagonal Gaussians, :math:`q(z \\mid x) = \\sum_k \\alpha_k(x)\\,
    \\mathcal N(z;\\, \\mu_k(x), \\mathrm{diag}\\,\\sigma_k(x)^2)`.

    One network maps the standardized observation :math:`(x - m_x) / s_x` to the
    mixture logits, the ``K × d`` means and the ``K × d`` scales
    (:math:`\\sigma = \\mathrm{softplus}(\\cdot) + 10^{-6}`). The output layer starts
    near zero weights, so initially every ``x`` gets the same mixture with means
    ``init_loc`` and scales ``init_scale``.

    Arguments:
        data_dim: ``D``, the observation size.
        latent_dim: ``d``.
        num_components: ``K >= 1``.
        hidden: Hidden widths of the network (``()`` makes it affine in ``x``).
        x_loc, x_scale: ``(D,)`` input standardization (default 0 and 1).
        init_loc: ``(K, d)`` initial component means (default 0).
        init_scale: Initial component scale, a positive number or a ``(d,)`` tensor.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        num_components: int = 5,
        hidden: Sequence[int] = (64, 64),
        *,
        x_loc: Tensor | None = None,
        x_scale: Tensor | None = None,
        init_loc: Tensor | None = None,
        init_scale: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        counts = ((data_dim, "data_dim"), (latent_dim, "latent_dim"), (num_components, "num_components"))
        for value, name in counts:
            if _check_count(value, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        k, d = num_components, latent_dim
        self.data_dim, self.latent_dim, self.num_components = data_dim, latent_dim, num_components
        self.net = mlp(data_dim, k * (1 + 2 * d), tuple(hidden))
        self.register_buffer(
            "x_loc", torch.zeros(data_dim) if x_loc is None else x_loc.detach().reshape(data_dim)
        )
        self.register_buffer(
            "x_scale", torch.ones(data_dim) if x_scale is None else x_scale.detach().reshape(data_dim)
        )
        init_loc = torch.zeros(k, d) if init_loc is None else init_loc.detach().reshape(k, d)
        init_scale = torch.as_tensor(init_scale, dtype=torch.get_default_dtype()).detach().expand(d)
        if not bool((torch.isfinite(init_scale) & (init_scale > 0)).all()):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        raw_scale = torch.tensor([_inverse_softplus(float(s)) for s in init_scale])
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(1e-2)
            bias = [torch.zeros(k), init_loc.reshape(-1).to(last.bias), raw_scale.repeat(k)]
            last.bias.copy_(torch.cat(bias))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture log-weights ``(n, K)`` (normalized), means and scales ``(n, K, d)``."""
        k, d = self.num_components, self.latent_dim
        h = self.net((x - self.x_loc) / self.x_scale)
        logits, loc, raw = h.split([k, k * d, k * d], dim=-1)
        shape = x.shape[:-1] + (k, d)
        return torch.log_softmax(logits, -1), loc.reshape(shape), F.softplus(raw.reshape(shape)) + 1e-6

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q(z \\mid x)` for ``z`` ``(..., n, d)`` and ``x`` ``(n, D)``; returns ``(..., n)``."""
        log_alpha, loc, scale = self(x)
        comp = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., n, K)
        return torch.logsumexp(log_alpha + comp, dim=-1)

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num_samples, n, d)`` i.i.d. draws (component, then Gaussian); not differentiable."""
        with torch.no_grad():
            log_alpha, loc, scale = self(x)
            n = x.shape[0]
            probs = log_alpha.exp()
            comp = torch.multinomial(probs, num_samples, replacement=True, generator=generator).T  # (S, n)
            rows = torch.arange(n, device=x.device).expand(num_samples, n)
            eps = torch.randn(
                (num_samples, n, self.latent_dim), generator=generator, dtype=loc.dtype, device=loc.device
            )
            return loc[rows, comp] + scale[rows, comp] * eps

    def rsample_components(
        self, x: Tensor, num_per_component: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Stratified reparameterized draws: ``T`` from every component.

        Returns:
            ``z`` of shape ``(T, K, n, d)`` (``z[t, k]`` drawn from component ``k``) and
            the mixture log-weights ``(K, n)``.
        """
        log_alpha, loc, scale = self(x)  # (n, K), (n, K, d)
        loc, scale = loc.transpose(0, 1), scale.transpose(0, 1)  # (K, n, d)
        eps = torch.randn(
            (num_per_component,) + tuple(loc.shape), generator=generator, dtype=loc.dtype, device=loc.device
        )
        return loc + scale * eps, log_alpha.T


def _log_joint(x: Tensor, z: Tensor, decode, log_prior, likelihood: Likelihood) -> Tensor:
    """:math:`\\log p(x \\mid \\mathrm{decode}(z)) + \\log p(z)` for ``z`` ``(..., n, d)``; ``(..., n)``."""
    try:
        ll = likelihood(decode(z)).log_prob(x)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"likelihood(decode(z)).log_prob(x) failed for z of shape {tuple(z.shape)} and x of shape "
            f"{tuple(x.shape)}: decode must map (..., d) latents to (..., D) parameters ({e})"
        ) from e
    lp = log_prior(z)
    if ll.shape != z.shape[:-1]:
        raise ValueError(
            f"likelihood(decode(z)).log_prob(x) has shape {tuple(ll.shape)}, expected {tuple(z.shape[:-1])}: "
            "decode must map (..., d) latents to (..., D) parameters"
        )
    if lp.shape != z.shape[:-1]:
        raise ValueError(f"log_prior(z) has shape {tuple(lp.shape)}, expected {tuple(z.shape[:-1])}")
    return ll + lp


def _check_data(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, D), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, D) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def stratified_iwae_bound(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    proposal: MixtureProposal,
    num_per_component: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-point stratified-mixture IWAE bound (Morningstar et al., 2021), differentiable in the proposal.

    With ``T`` reparameterized draws :math:`z_{k,t} \\sim q_k(\\cdot \\mid x)` from
    every component ``k`` of :math:`q = \\sum_k \\alpha_k q_k`,

    .. math::
        L(x) = \\log \\frac1T \\sum_{t=1}^T \\sum_{k=1}^K \\alpha_k
               \\frac{p(x \\mid \\mathrm{decode}(z_{k,t}))\\, p(z_{k,t})}{q(z_{k,t} \\mid x)} .

    The inner sum is unbiased for :math:`p(x)`
    (:math:`\\mathbb E\\,\\sum_k \\alpha_k w(z_k) = \\int \\sum_k \\alpha_k q_k\\, p / q = p(x)`),
    so :math:`\\mathbb E L \\le \\log p(x)`, with equality when every weight equals
    :math:`p(x)`. The component choice is summed over instead of sampled, so the
    gradient needs no score function: the mixture weights enter as :math:`\\alpha_k`
    and through :math:`q`, the draws by reparameterization.

    Returns:
        An ``(n,)`` tensor.

    References:
        | Automatic Differentiation Variational Inference with Mixtures
        | (Morningstar, Vikram, Ham, Gallagher and Dillon, 2021) https://arxiv.org/abs/2003.01687
    """
    t = _check_count(num_per_component, "num_per_component")
    if t < 1:
        raise ValueError(f"num_per_component must be >= 1, got {t}")
    z, log_alpha = proposal.rsample_components(x, t, generator)  # (T, K, n, d), (K, n)
    log_w = log_alpha + _log_joint(x, z, decode, log_prior, likelihood) - proposal.log_prob(z, x)
    return torch.logsumexp(log_w.reshape(-1, x.shape[0]), dim=0) - math.log(t)


def fit_proposal(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    latent_dim: int,
    *,
    num_components: int = 5,
    num_per_component: int = 1,
    steps: int = 2000,
    batch_size: int | None = 256,
    lr: float = 1e-3,
    final_lr_ratio: float = 0.01,
    hidden: Sequence[int] = (64, 64),
    prior_samples: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> MixtureProposal:
    """Fits an amortized :class:`MixtureProposal` to a frozen model by maximizing the IWAE bound.

    The model is :math:`z \\sim p(z)` (``log_prior``), :math:`x \\sim`
    ``likelihood(decode(z))``; neither is changed: only the proposal's parameters get
    gradients (taken with ``torch.autograd.grad``, so the decoder's ``.grad`` fields
    are left alone). Put a decoder with dropout or batch norm in eval mode first.
    Each step maximizes the mean :func:`stratified_iwae_bound` over a minibatch of
    ``x`` with ``num_per_component`` draws per component (``K × T`` decoder passes
    per point), with Adam.

    Any proposal with full support keeps :func:`importance_log_likelihood`
    unbiased, so fitting it on the very points to be evaluated is legitimate and
    gives the lowest variance.

    Arguments:
        x: ``(n, D)`` observations the proposal is fitted on.
        decode: Maps ``(..., d)`` latents to ``(..., D)`` likelihood parameters.
        log_prior: Maps ``(..., d)`` latents to ``(...)`` prior log-densities,
            e.g. ``FlowPrior.log_prob`` or a standard normal's.
        likelihood: The observation model (event dim 1).
        latent_dim: ``d``.
        num_components: ``K``, mixture components.
        num_per_component: ``T``, reparameterized draws per component per step. More
            draws tighten the bound but weaken the proposal's gradient signal
            (Rainforth et al., 2018); ``T = 1`` (``K`` stratified draws) fitted the
            best proposals per unit of compute in our tests.
        steps: Adam steps.
        batch_size: Points per step (``None``: all of ``x``).
        lr: Initial Adam learning rate; it decays to ``lr * final_lr_ratio`` on a
            cosine schedule over the ``steps``, which settles the noisy IWAE gradient.
        final_lr_ratio: See ``lr``, in ``(0, 1]`` (``1``: constant rate).
        hidden: Hidden widths of the proposal network.
        prior_samples: Optional ``(M, d)`` draws from the prior; the initial
            component means are ``K`` of them and the initial scale their
            per-dimension standard deviation. Default: means drawn from
            :math:`\\mathcal N(0, I)` and scale 1 (right for a standard-normal prior).
        seed: Seeds the initialization, minibatches and draws (the global RNG
            state is left untouched).
        progress: Show a tqdm progress bar.

    Returns:
        The fitted proposal in eval mode, with ``history``: the mean minibatch bound
        at every step.

    Raises:
        ValueError: Malformed arguments, or shapes that do not fit together.
        NonFiniteLossError: The bound became NaN or infinite.
    """
    x = _check_data(x)
    latent_dim = _check_count(latent_dim, "latent_dim")
    steps = _check_count(steps, "steps")
    for value, name in ((latent_dim, "latent_dim"), (steps, "steps"), (num_components, "num_components")):
        if _check_count(value, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if _check_count(num_per_component, "num_per_component") < 1:
        raise ValueError(f"num_per_component must be >= 1, got {num_per_component}")
    if batch_size is not None and _check_count(batch_size, "batch_size") < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if not (isinstance(final_lr_ratio, (int, float)) and 0 < final_lr_ratio <= 1):
        raise ValueError(f"final_lr_ratio must lie in (0, 1], got {final_lr_ratio}")
    n, data_dim = x.shape
    g = torch.Generator().manual_seed(int(seed))
    if prior_samples is None:
        init_loc = torch.randn(num_components, latent_dim, generator=g, dtype=x.dtype)
        init_scale: float | Tensor = 1.0
    else:
        shape = getattr(prior_samples, "shape", None)
        if not isinstance(prior_samples, Tensor) or prior_samples.dim() != 2 or shape[1] != latent_dim:
            raise ValueError(f"prior_samples must have shape (M, {latent_dim}), got {shape}")
        if prior_samples.shape[0] < 2 or not bool(torch.isfinite(prior_samples).all()):
            raise ValueError("prior_samples must hold at least two finite draws")
        ps = prior_samples.detach().to("cpu", x.dtype)
        init_loc = ps[torch.randint(ps.shape[0], (num_components,), generator=g)]
        init_scale = ps.std(0).clamp_min(1e-6)
    x_scale = x.std(0) if n > 1 else torch.ones_like(x[0])
    x_scale = torch.where(x_scale > 0, x_scale, torch.ones_like(x_scale))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        proposal = MixtureProposal(
            data_dim,
            latent_dim,
            num_components,
            hidden,
            x_loc=x.mean(0),
            x_scale=x_scale,
            init_loc=init_loc,
            init_scale=init_scale,
        )
    proposal = proposal.to(device=x.device, dtype=x.dtype)
    # Draws on x's device: a CPU generator serves CPU data, a device generator otherwise.
    dg = g if x.device.type == "cpu" else torch.Generator(device=x.device).manual_seed(int(seed))
    params = [p for p in proposal.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * final_lr_ratio)
    proposal.history = []  # type: ignore[attr-defined]
    order, cursor = None, 0
    bar = tqdm(range(steps), desc="proposal", disable=not progress, leave=False)
    for step in bar:
        if batch_size is None or batch_size >= n:
            xb = x
        else:
            if order is None or cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=g).to(x.device), 0
            xb = x[order[cursor : cursor + batch_size]]
            cursor += batch_size
        bound = stratified_iwae_bound(xb, decode, log_prior, likelihood, proposal, num_per_component, dg)
        bound = bound.mean()
        if not bool(torch.isfinite(bound)):
            raise NonFiniteLossError(f"the proposal's IWAE bound is {float(bound)} at step {step}")
        grads = torch.autograd.grad(-bound, params)
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        sched.step()
        proposal.history.append(float(bound.detach()))  # type: ignore[attr-defined]
        if step % 50 == 0:
            bar.set_postfix(bound=f"{float(bound.detach()):.4f}")
    bar.close()
    for p in params:
        p.grad = None
    return proposal.eval()


def importance_log_likelihood(
    x: Tensor,
    decode: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    proposal: Proposal,
    num_samples: int = 1000,
    *,
    chunk_size: int = 2**16,
    generator: torch.Generator | None = None,
    keep_log_weights: bool = True,
) -> ImportanceEstimate:
    """Per-point importance-sampling estimate of :math:`\\log p(x)` with its Monte-Carlo error.

    With ``S`` i.i.d. draws :math:`z_s \\sim q(\\cdot \\mid x)` and weights
    :math:`w_s = p(x \\mid \\mathrm{decode}(z_s))\\, p(z_s) / q(z_s \\mid x)`,

    .. math::
        \\log \\hat p(x) = \\log \\frac1S \\sum_s w_s, \\qquad
        \\mathrm{se} = \\frac{\\mathrm{sd}(w)}{\\sqrt S\\, \\bar w}
                    = \\sqrt{\\frac{S \\sum_s \\tilde w_s^2 - 1}{S - 1}},
        \\quad \\tilde w_s = w_s / \\textstyle\\sum_r w_r .

    :math:`\\hat p(x)` is unbiased for any proposal whose support covers the
    posterior's; :math:`\\log \\hat p(x)` is then biased low (Jensen) by about
    :math:`\\mathrm{se}^2 / 2`. ``se`` is the delta-method standard error of
    :math:`\\log \\hat p` (``sd`` with ``S - 1`` in the denominator), computed from
    the self-normalized weights in log space; it is only trustworthy when the
    weights have finite variance (check the Pareto :math:`\\hat k` of
    ``log_weights``). A proposal that misses a posterior mode underestimates
    :math:`\\log p(x)` without the standard error showing it. If every weight is
    zero, ``log_px`` is ``-inf`` and ``stderr`` is ``inf``. Runs without gradients.

    Arguments:
        x: ``(n, D)`` observations.
        decode: Maps ``(..., d)`` latents to ``(..., D)`` likelihood parameters.
        log_prior: Maps ``(..., d)`` latents to ``(...)`` log-densities.
        likelihood: The observation model (event dim 1).
        proposal: See :class:`Proposal`; e.g. from :func:`fit_proposal`.
        num_samples: ``S >= 2`` draws per point.
        chunk_size: Most (point, draw) pairs decoded at once.
        generator: For reproducible draws (default: the global RNG); it must live on
            ``x``'s device.
        keep_log_weights: Return the ``(n, S)`` log-weights.

    Returns:
        An :class:`ImportanceEstimate` ``(log_px, stderr, log_weights)``.

    Raises:
        ValueError: Malformed arguments, shapes that do not fit together, or NaN /
            ``+inf`` log-weights.
    """
    x = _check_data(x)
    s = _check_count(num_samples, "num_samples")
    if s < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {s}")
    if _check_count(chunk_size, "chunk_size") < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = x.shape[0]
    points = max(1, chunk_size // s)
    draws = min(s, chunk_size)
    rows = []
    with torch.no_grad():
        for start in range(0, n, points):
            xb = x[start : start + points]
            b = xb.shape[0]
            cols = []
            for done in range(0, s, draws):
                m = min(draws, s - done)
                z = proposal.sample(xb, m, generator)
                if z.dim() != 3 or z.shape[:2] != (m, b):
                    raise ValueError(
                        f"proposal.sample returned shape {tuple(z.shape)}, expected ({m}, {b}, d)"
                    )
                lq = proposal.log_prob(z, xb)
                if lq.shape != (m, b):
                    raise ValueError(
                        f"proposal.log_prob returned shape {tuple(lq.shape)}, expected ({m}, {b})"
                    )
                cols.append((_log_joint(xb, z, decode, log_prior, likelihood) - lq).T)
            rows.append(torch.cat(cols, dim=1))
    log_w = torch.cat(rows, dim=0)  # (n, S)
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError(
            "log-weights contain NaN or +inf: check decode, log_prior and the proposal's support"
        )
    lse = torch.logsumexp(log_w, dim=-1)
    log_px = lse - math.log(s)
    # S * sum(w~^2) - 1 = expm1(log S + LSE(2 log w) - 2 LSE(log w)) >= 0, exact near 0.
    excess = torch.expm1(math.log(s) + torch.logsumexp(2 * log_w, dim=-1) - 2 * lse).clamp_min(0)
    stderr = torch.sqrt(excess / (s - 1))
    # Every weight zero: log p-hat = -inf with no usable error estimate.
    stderr = torch.where(torch.isneginf(lse), torch.full_like(stderr, math.inf), stderr)
    return ImportanceEstimate(log_px, stderr, log_w if keep_log_weights else None)
