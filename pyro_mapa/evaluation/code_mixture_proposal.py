"""An importance proposal for the smoothed empiricalized model, built from its codes and the MAPA kernel.

The smoothed model's prior is a mixture of ``N`` Gaussians on the codes; a fitted
amortized mixture of a few Gaussians cannot follow it in 8 dimensions (Pareto k̂ of 1 on
every point). The posterior over ``z`` given a held-out ``x`` concentrates on the codes of
the training points that resemble ``x``, which is what the MAPA kernel measures. So the
proposal is

.. math::
    q(z \\mid x) = (1 - ε) \\sum_{m=1}^M α_m(x)\\, \\mathcal N(z; z_{i_m}, \\mathrm{diag}(ρ σ)^2)
                 + ε\\, p(z),
    \\qquad α_m(x) \\propto κ(x, x_{i_m}),

with :math:`i_1..i_M` the ``M`` training points of largest kernel value :math:`κ(x, x_i)`
(or, given ``log_likelihood``, weights :math:`α_m(x) \\propto p(x \\mid f(z_{i_m}))`: the model's own
likelihood at each candidate code, closer to the posterior over the code than the data-space kernel),
``σ`` the codes' smoothing scale, ``ρ > 0`` a widening (below 1 when the likelihood is sharp), and a defensive share ``ε`` of the
prior itself, which bounds every weight by :math:`p(x \\mid z) / ε` (finite variance;
Hesterberg, 1995). Any ``ε > 0`` keeps the importance estimate unbiased.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CodeMixtureProposal"]


class CodeMixtureProposal:
    """:math:`q(z \\mid x)`: the codes of the ``M`` training points nearest ``x`` by the kernel, plus a share of the prior.

    Arguments:
        train_x: ``(N, D)`` training points (the rows the codes belong to).
        codes: ``(N, d)`` their codes.
        scale: ``σ``, the smoothing scale (a number or ``(d,)``).
        kernel: A :class:`~pyro_mapa.ProximityKernel` (``log_kernel(x, y)``), e.g. the table's.
        num_components: ``M``.
        widen: ``ρ > 0``, the components' scale relative to ``σ``.
        defensive: ``ε`` in ``(0, 1)``, the prior's share.
        log_likelihood: Optional ``log_likelihood(x, z)`` (``z`` ``(M, n, d)`` -> ``(M, n)``), the model's
            :math:`\\log p(x \\mid f(z))`; if given, the ``M`` candidates are weighted by it instead of
            by the kernel.
    """

    def __init__(
        self,
        train_x: Tensor,
        codes: Tensor,
        scale: float | Tensor,
        kernel,
        num_components: int = 20,
        widen: float = 1.0,
        defensive: float = 0.1,
        log_likelihood=None,
    ) -> None:
        if train_x.dim() != 2 or codes.dim() != 2 or train_x.shape[0] != codes.shape[0]:
            raise ValueError(
                f"train_x (N, D) and codes (N, d) must have one row per training point, got {tuple(train_x.shape)} "
                f"and {tuple(codes.shape)}"
            )
        for value, name in ((train_x, "train_x"), (codes, "codes")):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} contains NaN or inf; pass the finite training points and their codes")
        if not 1 <= int(num_components) <= codes.shape[0]:
            raise ValueError(f"num_components must lie in [1, N={codes.shape[0]}], got {num_components}")
        if not (isinstance(widen, (int, float)) and 0 < widen < float("inf")):
            raise ValueError(f"widen must be a positive number (the components' scale relative to the codes'), got {widen}")
        if not 0 < defensive < 1:
            raise ValueError(f"defensive must lie in (0, 1): a positive share of the prior keeps the weights bounded, got {defensive}")
        self.train_x = train_x
        self.codes = codes.detach()
        self.scale = torch.as_tensor(scale, dtype=codes.dtype).expand(codes.shape[1]).clone()
        if not bool((self.scale > 0).all()):
            raise ValueError(f"scale must be positive, got {self.scale.tolist()}")
        self.kernel = kernel
        self.num_components = int(num_components)
        self.widen = float(widen)
        self.defensive = float(defensive)
        self.log_likelihood = log_likelihood

    def _components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(n, M)`` log mixture weights and ``(n, M)`` code indices."""
        logk = self.kernel.log_kernel(x, self.train_x)  # (n, N)
        top = torch.topk(logk, self.num_components, dim=-1)
        if self.log_likelihood is None:
            return torch.log_softmax(top.values, -1).to(self.codes.dtype), top.indices
        with torch.no_grad():
            ll = self.log_likelihood(x, self.codes[top.indices].transpose(0, 1))  # (M, n)
        return torch.log_softmax(ll.T.to(self.codes.dtype), -1), top.indices

    def _log_normal(self, z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        u = (z - loc) / scale
        return -0.5 * u.pow(2).sum(-1) - scale.log().sum() - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def _log_prior(self, z: Tensor) -> Tensor:
        """:math:`\\log p(z)`, the equal-weight mixture over all ``N`` codes, for ``z`` ``(..., d)``."""
        flat = z.reshape(-1, z.shape[-1])
        chunk = max(1, 2**22 // (self.codes.numel()))
        out = [
            self._log_normal(flat[i : i + chunk].unsqueeze(1), self.codes, self.scale).logsumexp(-1)
            for i in range(0, flat.shape[0], chunk)
        ]
        return (torch.cat(out) - math.log(self.codes.shape[0])).reshape(z.shape[:-1])

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q(z \\mid x)` for ``z`` ``(..., n, d)``; returns ``(..., n)``."""
        log_alpha, idx = self._components(x)
        loc = self.codes[idx]  # (n, M, d)
        comp = self._log_normal(z.unsqueeze(-2), loc, self.widen * self.scale)  # (..., n, M)
        near = torch.logsumexp(log_alpha + comp, -1) + math.log1p(-self.defensive)
        return torch.logaddexp(near, self._log_prior(z) + math.log(self.defensive))

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num_samples, n, d)`` draws: a component (or the prior), then Gaussian noise."""
        with torch.no_grad():
            log_alpha, idx = self._components(x)
            n, d = x.shape[0], self.codes.shape[1]
            pick = torch.multinomial(log_alpha.exp(), num_samples, replacement=True, generator=generator).T  # (S, n)
            near_idx = idx.gather(1, pick.T).T  # (S, n) code indices
            any_idx = torch.randint(self.codes.shape[0], (num_samples, n), generator=generator)
            use_prior = torch.rand((num_samples, n), generator=generator) < self.defensive
            code_idx = torch.where(use_prior, any_idx, near_idx)
            width = torch.where(use_prior.unsqueeze(-1), self.scale, self.widen * self.scale)
            eps = torch.randn((num_samples, n, d), generator=generator, dtype=self.codes.dtype)
            return self.codes[code_idx] + width * eps
