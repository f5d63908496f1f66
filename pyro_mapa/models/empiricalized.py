"""MAPA's empiricalized model (Eq. 6): a uniform choice among the ``N`` codes, decoded."""

from __future__ import annotations

from typing import Any

import pyro
from torch import Tensor, nn

from ..errors import as_index_tensor
from .codebook import AmortizedCodebook
from .distributions import UniformIndex
from .likelihoods import Likelihood
from .vae import check_decoder_output

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
        if not isinstance(codebook, nn.Module) or not isinstance(getattr(codebook, "data", None), Tensor):
            raise TypeError(
                "codebook must be an AmortizedCodebook(encoder, decoder, data) (or another nn.Module codebook "
                f"with a data tensor), got {type(codebook).__name__}"
            )
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyro_mapa Likelihood (e.g. NormalLikelihood(sigma)), got {type(likelihood).__name__}"
            )
        self.codebook = codebook
        self.likelihood = likelihood

    @property
    def data(self) -> Tensor:
        return self.codebook.data

    def forward(self, batch_idx: Tensor | Any | None = None) -> Tensor:
        """Runs the model on rows ``batch_idx`` (a list or NumPy array of integers is converted)."""
        if batch_idx is not None:
            batch_idx = as_index_tensor(batch_idx, len(self.data), "batch_idx", device=self.data.device,
                                        per_step=True)
        pyro.module("codebook", self.codebook)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            c = pyro.sample("c", UniformIndex(len(self.data)))  # = Categorical(logits=zeros(N)), O(1) log_prob
            params = self.codebook(c)
            check_decoder_output(params, self.data, self.likelihood)
            return pyro.sample("x", self.likelihood(params), obs=self.data[idx])
