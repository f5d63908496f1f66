"""MAPA's empiricalized model (Eq. 6): a uniform choice among the ``N`` codes, decoded."""

from __future__ import annotations

import pyro
from torch import Tensor, nn

from .codebook import AmortizedCodebook
from .distributions import UniformIndex
from .likelihoods import Likelihood

__all__ = ["EmpiricalizedModel"]


class EmpiricalizedModel(nn.Module):
    """MAPA's empiricalized model (Eq. 6): :math:`c_n \\sim \\mathrm{Uniform}\\{1..N\\}`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(g_\\phi(x_{c_n})))`.

    Its index site is ``"c"`` inside plate ``"data"``, matching
    ``MAPAGuide(table, site="c", plate="data")``.

    Arguments:
        codebook: The :class:`~pyro_mapa.AmortizedCodebook` (encoder, decoder, data).
        likelihood: A :class:`~pyro_mapa.models.likelihoods.Likelihood`.
    """

    def __init__(self, codebook: AmortizedCodebook, likelihood: Likelihood) -> None:
        super().__init__()
        self.codebook = codebook
        self.likelihood = likelihood

    @property
    def data(self) -> Tensor:
        return self.codebook.data

    def forward(self, batch_idx: Tensor | None = None) -> Tensor:
        pyro.module("codebook", self.codebook)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            c = pyro.sample("c", UniformIndex(len(self.data)))  # = Categorical(logits=zeros(N)), O(1) log_prob
            return pyro.sample("x", self.likelihood(self.codebook(c)), obs=self.data[idx])
