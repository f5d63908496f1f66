"""Prior recovery (§5, App. C.3): a parametric prior over the learned codes.

After training MAPA the codes :math:`z_i = g_\\phi(x_i)` form an empirical prior.
:class:`GaussianCopulaPrior` turns it into a generative prior for ``d = 1``:

.. math::
    u_i = \\Phi^{-1}(\\mathrm{rank}(z_i) / (N + 1)),\\ \\text{standardized};\\qquad
    z = T(u),\\ u \\sim \\mathcal N(0, 1),

with ``T`` the monotone piecewise-linear interpolant of the sorted pairs ``(u, z)``,
extended linearly past the ends. The original model is then
``u ~ N(0, 1)``, ``x ~ p(x | f(T(u)))``.

For ``d > 1`` (and ``d = 1`` too) there are two density estimators with a
``log_prob``, so the original model can be evaluated with the prior as is:

- :class:`FlowPrior`: a normalizing flow (zuko's NSF or MAF) fitted by maximum
  likelihood to the standardized codes, with early stopping on held-out codes.
- :class:`KDEPrior`: a Gaussian kernel density estimate (Scott's rule), the cheap
  alternative; no fitting, but ``O(N)`` work per density evaluation.

Both give :meth:`~FlowPrior.distribution`, a Pyro distribution over
:math:`\\mathbb R^d`, so a model can write ``pyro.sample("z", prior.distribution())``
inside ``pyro.plate`` like any other prior.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import zuko
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints
from tqdm.auto import tqdm

from .mapa_elbo import NonFiniteLossError
from .posterior_table import _check_count

__all__ = ["FlowPrior", "GaussianCopulaPrior", "KDEPrior", "PriorDistribution"]


class GaussianCopulaPrior:
    """1-D Gaussian copula over codes: a monotone map ``T`` from ``N(0, 1)`` to the code distribution.

    Arguments:
        codes: ``(N,)`` or ``(N, 1)`` learned codes.

    Example:
        >>> prior = GaussianCopulaPrior(torch.randn(1000).exp())
        >>> z = prior.sample(torch.Size([5]))
        >>> bool((z > 0).all())
        True
    """

    def __init__(self, codes: Tensor) -> None:
        z = codes.detach().reshape(-1)
        if codes.dim() > 1 and codes.shape[-1] != 1:
            raise ValueError(f"GaussianCopulaPrior is for 1-D codes, got shape {tuple(codes.shape)}")
        if z.numel() < 2:
            raise ValueError("need at least two codes to fit a copula")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("codes contain NaN or inf")
        n = z.numel()
        z_sorted = torch.sort(z).values
        ranks = torch.arange(1, n + 1, dtype=z.dtype, device=z.device)
        u = torch.special.ndtri(ranks / (n + 1))
        u = (u - u.mean()) / u.std()
        self.u_knots = u
        self.z_knots = z_sorted

    def transform(self, u: Tensor) -> Tensor:
        """``T(u)``, applied elementwise; keeps a trailing singleton latent dim if given."""
        uk, zk = self.u_knots.to(u), self.z_knots.to(u)
        flat = u.reshape(-1)
        pos = torch.searchsorted(uk, flat).clamp(1, uk.numel() - 1)
        u0, u1 = uk[pos - 1], uk[pos]
        z0, z1 = zk[pos - 1], zk[pos]
        t = (flat - u0) / (u1 - u0)
        return torch.lerp(z0, z1, t).reshape(u.shape)  # exact at both knots

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Draws codes ``T(u)``, ``u ~ N(0, 1)``, of shape ``sample_shape + (1,)``."""
        u = torch.randn(
            tuple(sample_shape) + (1,), generator=generator, dtype=self.u_knots.dtype, device=self.u_knots.device
        )
        return self.transform(u)


_MIN_FLOW_CODES = 10


def _check_codes(codes: Any, name: str, min_count: int) -> Tensor:
    """Validated, detached ``(N, d)`` floating-point codes."""
    if not isinstance(codes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(
            f"{name} must have shape (N, d), got {tuple(codes.shape)}"
            + ("; for 1-D codes pass codes.unsqueeze(-1)" if codes.dim() == 1 else "")
        )
    if codes.shape[1] < 1:
        raise ValueError(f"{name} must have at least one latent dimension, got shape {tuple(codes.shape)}")
    if codes.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} codes, got {codes.shape[0]}")
    codes = codes.detach()
    if not codes.is_floating_point():
        codes = codes.to(torch.get_default_dtype())
    if not bool(torch.isfinite(codes).all()):
        raise ValueError(f"{name} contain NaN or inf")
    return codes


def _check_latents(z: Any, dim: int, name: str = "z") -> Tensor:
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., {dim}), got {type(z).__name__}")
    if z.dim() == 0 or z.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}), got {tuple(z.shape)}")
    return z


class PriorDistribution(TorchDistribution):
    """A recovered prior as a Pyro distribution over :math:`\\mathbb R^d` (event shape ``(d,)``).

    Returned by :meth:`FlowPrior.distribution` and :meth:`KDEPrior.distribution`.
    It has no parameters of its own: ``expand`` (which ``pyro.plate`` calls) only
    changes the batch shape, and every batch element is an independent draw from
    the same prior, so

    .. code-block:: python

        with pyro.plate("data", n):
            z = pyro.sample("z", prior.distribution())   # (n, d)

    works as with ``dist.Normal(0, 1).expand([d]).to_event(1)``. Sampling uses
    torch's global RNG (``pyro.set_rng_seed`` seeds it).

    Arguments:
        prior: A :class:`FlowPrior` or :class:`KDEPrior` (anything with ``dim``,
            ``log_prob(z)`` and ``sample(shape)``; ``rsample(shape)`` too if it is
            reparameterizable).
        batch_shape: The batch shape (default ``()``).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(
        self, prior: Any, batch_shape: Sequence[int] = (), validate_args: bool | None = None
    ) -> None:
        self.prior = prior
        super().__init__(torch.Size(batch_shape), torch.Size([prior.dim]), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return hasattr(self.prior, "rsample")

    def expand(self, batch_shape, _instance=None) -> PriorDistribution:
        new = self._get_checked_instance(PriorDistribution, _instance)
        new.prior = self.prior
        super(PriorDistribution, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.prior.sample(torch.Size(sample_shape) + self.batch_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        if not self.has_rsample:
            raise TypeError(
                f"{type(self.prior).__name__} has no reparameterized sampler; use .sample(), or a "
                "FlowPrior where gradients must flow through the draws"
            )
        return self.prior.rsample(torch.Size(sample_shape) + self.batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lp = self.prior.log_prob(value)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def __repr__(self) -> str:
        name = type(self.prior).__name__
        return f"PriorDistribution({name}, batch_shape={tuple(self.batch_shape)}, dim={self.prior.dim})"


class FlowPrior(nn.Module):
    """A normalizing-flow density over ``d``-dimensional codes, for ``d >= 1`` (METHOD.md §6).

    The codes are standardized, :math:`y = (z - m) / s` with the per-dimension mean
    ``m`` and standard deviation ``s`` of the training codes, and a zuko flow
    :math:`p_\\psi(y)` with a standard-normal base is fitted to ``y`` by maximum
    likelihood. The density of a code is the change of variables

    .. math:: \\log p(z) = \\log p_\\psi\\big((z - m) / s\\big) - \\sum_{j=1}^d \\log s_j .

    Build it with :meth:`fit`. After fitting, the module is in eval mode and its
    parameters do not require gradients (the prior is frozen; call
    ``requires_grad_(True)`` to fine-tune it). It is an ``nn.Module``, so ``.to``,
    ``state_dict`` and ``load_state_dict`` work.

    Arguments:
        flow: An unconditional zuko flow (``flow()`` is a distribution over ``(d,)``).
        loc: ``(d,)`` standardization mean ``m``.
        scale: ``(d,)`` standardization scale ``s > 0``.

    Attributes:
        history: ``{"step": [...], "train": [...], "val": [...]}``, the training and
            held-out negative log-likelihoods per code (nats, in code units) at each
            evaluation; ``val`` is empty without a held-out split.
        best_step: The step whose state was kept (the best held-out loss), or the
            last step without a held-out split.
        val_index: Indices (into the fitted ``codes``) of the held-out codes.

    Example:
        >>> codes = torch.randn(500, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
        >>> prior = FlowPrior.fit(codes, steps=50, flow="maf")
        >>> prior.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> prior.sample(torch.Size([4])).shape
        torch.Size([4, 2])
    """

    def __init__(self, flow: nn.Module, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        if loc.dim() != 1 or scale.shape != loc.shape:
            raise ValueError(
                f"loc and scale must both have shape (d,), got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if not bool(torch.isfinite(loc).all()):
            raise ValueError("loc contains NaN or inf")
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise ValueError("scale must be positive and finite")
        self.flow = flow
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())
        self.history: dict[str, list[float]] = {"step": [], "train": [], "val": []}
        self.best_step: int | None = None
        self.val_index: Tensor | None = None

    @property
    def dim(self) -> int:
        """The latent dimension ``d``."""
        return int(self.loc.shape[0])

    @classmethod
    def fit(
        cls,
        codes: Tensor,
        *,
        steps: int = 2000,
        lr: float = 3e-3,
        hidden: Sequence[int] = (64, 64),
        transforms: int = 3,
        flow: str = "nsf",
        bins: int = 8,
        batch_size: int | None = None,
        val_fraction: float = 0.1,
        eval_every: int = 10,
        patience: int | None = 30,
        weight_decay: float = 0.0,
        seed: int = 0,
        progress: bool = False,
    ) -> FlowPrior:
        """Fits the flow to ``codes`` by maximum likelihood with Adam and early stopping.

        A random ``val_fraction`` of the codes (at least one) is held out. Every
        ``eval_every`` steps (and after the last) the held-out negative log-likelihood
        is computed; the state with the lowest one is kept, and training stops after
        ``patience`` evaluations without improvement. The standardization uses the
        training part only.

        Arguments:
            codes: ``(N, d)`` codes, ``N >= 10``, finite, with positive spread in
                every dimension. Their dtype and device are the flow's.
            steps: Maximum number of Adam steps.
            lr: Adam learning rate.
            hidden: Hidden layer widths of each transform's network.
            transforms: Number of flow transforms.
            flow: ``"nsf"`` (rational-quadratic neural spline flow, the default; the
                splines act on ``[-5, 5]``, which standardization makes the bulk) or
                ``"maf"`` (affine masked autoregressive flow). Both are fully
                autoregressive; for ``d = 1`` zuko uses an element-wise transform.
            bins: Spline bins (``"nsf"`` only).
            batch_size: Codes per step (default ``None``: the full training set);
                minibatches cycle through random permutations.
            val_fraction: Held-out fraction in ``[0, 1)``; ``0`` disables early
                stopping and keeps the last state.
            eval_every: Steps between held-out evaluations.
            patience: Evaluations without improvement before stopping (``None``:
                never stop early, but still keep the best state).
            weight_decay: Adam weight decay.
            seed: Seeds the split, the minibatches and the flow's initialization
                (the global RNG state is restored afterwards).
            progress: Show a tqdm progress bar.

        Returns:
            The fitted, frozen prior.

        Raises:
            ValueError: Malformed codes or arguments.
            NonFiniteLossError: The training loss became NaN or infinite.
        """
        codes = _check_codes(codes, "codes", _MIN_FLOW_CODES)
        steps = _check_count(steps, "steps")
        transforms = _check_count(transforms, "transforms")
        bins = _check_count(bins, "bins")
        eval_every = _check_count(eval_every, "eval_every")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if transforms < 1:
            raise ValueError(f"transforms must be >= 1, got {transforms}")
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        if patience is not None and _check_count(patience, "patience") < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if batch_size is not None and _check_count(batch_size, "batch_size") < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be >= 1, got {hidden}")
        if flow not in ("nsf", "maf"):
            raise ValueError(f"flow must be 'nsf' or 'maf', got {flow!r}")
        if flow == "nsf" and bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")

        n, d = codes.shape
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=g).to(codes.device)
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
        if n - n_val < 2:
            raise ValueError(
                f"val_fraction={val_fraction} leaves fewer than two training codes out of {n}"
            )
        val, train = codes[perm[:n_val]], codes[perm[n_val:]]
        loc, scale = train.mean(0), train.std(0)
        flat = (~(scale > 0)).nonzero().reshape(-1).tolist()
        if flat:
            raise ValueError(
                f"codes have zero spread in dimension(s) {flat}; a density on R^d cannot be fitted"
            )

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            if flow == "nsf":
                net = zuko.flows.NSF(d, 0, bins=bins, transforms=transforms, hidden_features=hidden)
            else:
                net = zuko.flows.MAF(d, 0, transforms=transforms, hidden_features=hidden)
        net = net.to(device=codes.device, dtype=codes.dtype)
        prior = cls(net, loc, scale)
        prior.val_index = perm[:n_val].clone()
        y_train = (train - loc) / scale
        y_val = (val - loc) / scale
        log_det = float(scale.log().sum())  # nats added to the standardized NLL

        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, bad = math.inf, None, 0
        order, cursor = None, 0
        bar = tqdm(range(steps), desc="FlowPrior", disable=not progress, leave=False)
        net.train()
        for step in bar:
            if batch_size is None or batch_size >= len(y_train):
                yb = y_train
            else:
                if order is None or cursor + batch_size > len(y_train):
                    order, cursor = torch.randperm(len(y_train), generator=g).to(codes.device), 0
                yb = y_train[order[cursor : cursor + batch_size]]
                cursor += batch_size
            loss = -net().log_prob(yb).mean()
            if not bool(torch.isfinite(loss)):
                raise NonFiniteLossError(f"FlowPrior training loss is {float(loss)} at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % eval_every and step != steps - 1:
                continue
            prior.history["step"].append(step + 1)
            prior.history["train"].append(float(loss.detach()) + log_det)
            if n_val == 0:
                continue
            with torch.no_grad():
                v = float(-net().log_prob(y_val).mean()) + log_det
            prior.history["val"].append(v)
            bar.set_postfix(val=f"{v:.4f}")
            if v < best:
                best, best_state, bad = v, copy.deepcopy(net.state_dict()), 0
                prior.best_step = step + 1
            else:
                bad += 1
                if patience is not None and bad >= patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        else:  # no held-out split (or every held-out loss was NaN): keep the last state
            prior.best_step = prior.history["step"][-1] if prior.history["step"] else None
        prior.eval()
        prior.requires_grad_(False)
        return prior

    def log_prob(self, z: Tensor) -> Tensor:
        """:math:`\\log p(z)` for ``z`` of shape ``(..., d)``; returns ``(...)`` in the prior's dtype."""
        z = _check_latents(z, self.dim)
        y = (z.to(self.loc) - self.loc) / self.scale
        return self.flow().log_prob(y) - self.scale.log().sum()

    def rsample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Draws of shape ``sample_shape + (d,)``, differentiable in the flow's parameters.

        Base noise :math:`u \\sim \\mathcal N(0, I)` is drawn with ``generator``
        (default: torch's global RNG, as zuko's own ``sample`` does) and pushed
        through the inverse flow and the inverse standardization.
        """
        shape = torch.Size(sample_shape)
        dist = self.flow()
        base = dist.base
        normal = getattr(base, "base_dist", base)
        if isinstance(normal, torch.distributions.Normal):
            eps = torch.randn(
                shape + (self.dim,), generator=generator, dtype=self.loc.dtype, device=self.loc.device
            )
            u = normal.loc + normal.scale * eps
        elif generator is None:
            u = base.rsample(shape)
        else:
            raise ValueError("generator is only supported for flows with a Gaussian base")
        return self.loc + self.scale * dist.transform.inv(u)

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`rsample`, without gradients. Reproducible with a seeded ``generator``."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def distribution(self) -> PriorDistribution:
        """This prior as a Pyro distribution with event shape ``(d,)`` (see :class:`PriorDistribution`)."""
        return PriorDistribution(self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, best_step={self.best_step}"


class KDEPrior:
    """A Gaussian kernel density estimate over ``(N, d)`` codes.

    .. math::
        p(z) = \\frac1N \\sum_{i=1}^N \\mathcal N(z;\\, z_i,\\, H), \\qquad
        H = h^2\\, \\hat\\Sigma,

    with :math:`\\hat\\Sigma` the unbiased sample covariance of the codes and the
    bandwidth factor ``h`` from Scott's rule :math:`h = N^{-1/(d+4)}` by default
    (as ``scipy.stats.gaussian_kde``). Nothing is fitted; each density evaluation
    costs ``O(N d)`` per query point.

    Arguments:
        codes: ``(N, d)`` codes, ``N >= 2``, with a non-singular covariance.
        bandwidth: ``None`` or ``"scott"`` (Scott's rule), ``"silverman"``
            (:math:`h = (N (d + 2) / 4)^{-1/(d+4)}`), or a positive number ``h``.

    Example:
        >>> prior = KDEPrior(torch.randn(200, 3))
        >>> prior.log_prob(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, codes: Tensor, bandwidth: float | str | None = None) -> None:
        codes = _check_codes(codes, "codes", 2)
        n, d = codes.shape
        if bandwidth is None or bandwidth == "scott":
            factor = n ** (-1.0 / (d + 4))
        elif bandwidth == "silverman":
            factor = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        elif (
            isinstance(bandwidth, (int, float))
            and not isinstance(bandwidth, bool)
            and math.isfinite(bandwidth)
            and bandwidth > 0
        ):
            factor = float(bandwidth)
        else:
            raise ValueError(
                f"bandwidth must be None, 'scott', 'silverman' or a positive number, got {bandwidth!r}"
            )
        cov = torch.cov(codes.T).reshape(d, d)
        kernel_cov = factor**2 * cov
        chol, info = torch.linalg.cholesky_ex(kernel_cov)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            raise ValueError(
                "codes have a singular covariance (too few codes, or codes on a lower-dimensional subspace)"
            )
        self.codes = codes
        self.factor = factor
        self.kernel_cov = kernel_cov
        self.kernel_chol = chol
        self._white = torch.linalg.solve_triangular(chol, codes.T, upper=False).T  # (N, d)
        log_det = float(chol.diagonal().log().sum())
        self._log_norm = -math.log(n) - log_det - 0.5 * d * math.log(2 * math.pi)

    @property
    def dim(self) -> int:
        """The latent dimension ``d``."""
        return int(self.codes.shape[1])

    def log_prob(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """:math:`\\log p(z)` for ``z`` of shape ``(..., d)``; returns ``(...)`` in the codes' dtype.

        Query points are processed ``chunk_size`` at a time (default: about
        :math:`2^{22} / N`), so memory stays ``O(chunk_size · N)``.
        """
        z = _check_latents(z, self.dim)
        n = self.codes.shape[0]
        if chunk_size is None:
            chunk_size = max(1, 2**22 // n)
        flat = z.to(self.codes).reshape(-1, self.dim)
        white = torch.linalg.solve_triangular(self.kernel_chol, flat.T, upper=False).T
        out = []
        for start in range(0, white.shape[0], chunk_size):
            dist2 = torch.cdist(
                white[start : start + chunk_size], self._white, compute_mode="donot_use_mm_for_euclid_dist"
            ).pow(2)
            out.append(torch.logsumexp(-0.5 * dist2, dim=-1))
        lp = torch.cat(out) if out else white.new_zeros(0)
        return (lp + self._log_norm).reshape(z.shape[:-1])

    def sample(self, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
        """Draws ``z_i + L ε`` (uniform ``i``, ``L L^T = H``) of shape ``sample_shape + (d,)``."""
        shape = torch.Size(sample_shape)
        idx = torch.randint(self.codes.shape[0], shape, generator=generator, device=self.codes.device)
        eps = torch.randn(
            shape + (self.dim,), generator=generator, dtype=self.codes.dtype, device=self.codes.device
        )
        return self.codes[idx] + eps @ self.kernel_chol.T

    def distribution(self) -> PriorDistribution:
        """This prior as a Pyro distribution with event shape ``(d,)`` (see :class:`PriorDistribution`)."""
        return PriorDistribution(self)

    def __repr__(self) -> str:
        return f"KDEPrior(N={self.codes.shape[0]}, d={self.dim}, factor={self.factor:.4g})"
