"""Distributions over the ``N`` code indices: a sparse table row, and the uniform index prior."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

__all__ = ["TableCategorical", "UniformIndex"]


class TableCategorical(TorchDistribution):
    """Categorical over ``{0, .., N-1}`` given, per batch element, ``M`` support indices.

    Each row holds column ``indices`` and unnormalized ``logits``; the distribution is
    renormalized over them and is zero elsewhere. This is how :class:`~pyro_mapa.MAPAGuide`
    samples from a (possibly truncated) :class:`~pyro_mapa.PosteriorTable` without
    building a dense ``(B, N)`` matrix.

    Arguments:
        indices: ``batch_shape + (M,)`` long tensor of distinct column indices.
        logits: ``batch_shape + (M,)`` log-weights of those indices.
        num_categories: ``N``.
    """

    arg_constraints = {"logits": constraints.real}
    has_enumerate_support = False

    def __init__(
        self,
        indices: Tensor,
        logits: Tensor,
        num_categories: int,
        validate_args: bool | None = None,
    ) -> None:
        if indices.shape != logits.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and logits {tuple(logits.shape)} differ")
        self.indices = indices
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.num_categories = int(num_categories)
        super().__init__(batch_shape=indices.shape[:-1], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.num_categories - 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        m = self.indices.shape[-1]
        return TableCategorical(
            self.indices.expand(batch_shape + (m,)),
            self.logits.expand(batch_shape + (m,)),
            self.num_categories,
        )

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        m = self.indices.shape[-1]
        probs = self.logits.exp().reshape(-1, m)
        n_draws = max(1, sample_shape.numel())
        pos = torch.multinomial(probs, n_draws, replacement=True)  # (batch, draws)
        idx = self.indices.reshape(-1, m).gather(1, pos)
        idx = idx.T.reshape(sample_shape + self.batch_shape)
        return idx

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        idx = self.indices.expand(shape + self.indices.shape[-1:])
        logits = self.logits.expand(idx.shape)
        match = idx == value.expand(shape).unsqueeze(-1)
        neg_inf = torch.full_like(logits, -float("inf"))
        return torch.where(match, logits, neg_inf).logsumexp(-1)

    @property
    def mean(self) -> Tensor:
        return (self.logits.exp() * self.indices.to(self.logits.dtype)).sum(-1)

    @property
    def variance(self) -> Tensor:
        x = self.indices.to(self.logits.dtype)
        p = self.logits.exp()
        mean = (p * x).sum(-1, keepdim=True)
        return (p * (x - mean) ** 2).sum(-1)


class UniformIndex(TorchDistribution):
    """The empiricalized prior :math:`c \\sim \\mathrm{Uniform}\\{0, .., N-1\\}` at ``O(1)`` cost per value.

    Equal to ``dist.Categorical(logits=torch.zeros(N))``, whose ``log_prob`` broadcasts
    every value against all ``N`` logits (a ``(K+S, B, N)`` tensor per MAPA step); this
    one returns :math:`-\\log N` directly, which matters for large ``N``.

    Arguments:
        num_categories: ``N``.
    """

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, num_categories: int, batch_shape=torch.Size(), validate_args: bool | None = None) -> None:
        if int(num_categories) < 1:
            raise ValueError(f"num_categories must be >= 1, got {num_categories}")
        self.num_categories = int(num_categories)
        super().__init__(batch_shape=torch.Size(batch_shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.num_categories - 1)

    def expand(self, batch_shape, _instance=None):
        return UniformIndex(self.num_categories, batch_shape, validate_args=self._validate_args)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return torch.randint(self.num_categories, torch.Size(sample_shape) + self.batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        return torch.full(shape, -math.log(self.num_categories), device=value.device)

    @property
    def mean(self) -> Tensor:
        return torch.full(self.batch_shape, (self.num_categories - 1) / 2)

    @property
    def variance(self) -> Tensor:
        return torch.full(self.batch_shape, (self.num_categories**2 - 1) / 12)
