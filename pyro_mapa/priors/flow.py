"""Prior recovery by a normalizing flow (zuko's NSF or MAF) fitted to the learned codes.

zuko is imported when a flow is fitted, so ``import pyro_mapa`` stays cheap.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import NonFiniteLossError, check_nonnegative_int
from .distribution import MIN_FLOW_CODES, PriorDistribution, check_codes, check_latents

__all__ = ["FlowPrior"]


class FlowPrior(nn.Module):
    """A normalizing-flow density over ``d``-dimensional codes, for ``d >= 1`` (docs/method.md §6).

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
        codes = check_codes(codes, "codes", MIN_FLOW_CODES)
        steps = check_nonnegative_int(steps, "steps")
        transforms = check_nonnegative_int(transforms, "transforms")
        bins = check_nonnegative_int(bins, "bins")
        eval_every = check_nonnegative_int(eval_every, "eval_every")
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
        if patience is not None and check_nonnegative_int(patience, "patience") < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if batch_size is not None and check_nonnegative_int(batch_size, "batch_size") < 1:
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
            import zuko  # imported here so that `import pyro_mapa` does not load it

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
        z = check_latents(z, self.dim)
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

