r"""LiBI's stage-1 objective (:mod:`~pyro_mapa.training.libi`) as a Pyro loss for :func:`~pyro_mapa.training.fit`.

Stage 1 fits the decoder :math:`f_\theta` and a code network :math:`h_\varphi` (``d`` outputs) by minimizing,
on each minibatch :math:`B` with codes :math:`Z = \{h_\varphi(x_n)\}_{n \in B}`,

.. math::

    L(B) = -\frac1{|B|} \sum_{n \in B} \log p(x_n \mid f_\theta(h_\varphi(x_n)))
    + \epsilon_{HZ}\, e^{HZ(Z)} + e^{\|\hat\Sigma(Z) - I\|_F^2 / \epsilon_\Sigma} + e^{\|\hat\mu(Z)\|^2 / \epsilon_\mu}

(:func:`libi_code_loss`). Nothing is sampled, so there is no model or guide in Pyro's sense: the
"model" :class:`LiBICodeModel` holds the decoder, the likelihood and the data, the "guide"
:class:`LiBICodeGuide` the code network; calling either with the minibatch indices registers its
network with ``pyro.module`` (the decoder as ``"decoder"``, the name :class:`~pyro_mapa.VAEModel`
gives it, the code network as ``"libi_code_network"``), which is how ``SVI`` finds the parameters
to step. :class:`LiBICodeLoss` has Pyro's loss interface (``loss``, ``loss_and_grads``,
``differentiable_loss``, each ``(model, guide, batch_idx)``) and returns :math:`N \cdot L(B)`, the
per-point objective scaled to the data as an ELBO estimate is, so ``fit``'s per-point epoch loss is
the mean of :math:`L(B)`.

:math:`HZ` needs at least ``d + 2`` codes. ``fit`` draws ``torch.randperm(N).split(batch_size)``,
whose last minibatch can be shorter; :meth:`LiBICodeLoss.loss_and_grads` then merges it into the
one before: it takes no step on that one (it registers no parameter, so ``SVI`` steps none, and
returns 0) and one step on both together. Every point is thus in exactly one step per epoch, and
the model and guide count one decoder and one code-network row per point per epoch
(``decoder_passes``, ``encoder_passes``, which ``fit`` reads).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import pyro
import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..diagnostics.normality import henze_zirkler
from ..models.likelihoods import Likelihood

__all__ = ["CodeLoss", "LiBICodeGuide", "LiBICodeLoss", "LiBICodeModel", "check_stage1_param_store",
           "libi_code_loss", "remove_stage1_params"]

_FROZEN = ".*was not registered in the param store because requires_grad=False"


class CodeLoss(NamedTuple):
    """Stage 1's loss on one minibatch and its four terms (0-dim tensors; ``total`` is differentiable)."""

    total: Tensor
    nll: Tensor
    hz_penalty: Tensor
    cov_penalty: Tensor
    mean_penalty: Tensor


def libi_code_loss(decoder: nn.Module, code_network: nn.Module, x: Tensor, likelihood: Likelihood, *,
                   hz_weight: float, cov_scale: float, mean_scale: float) -> CodeLoss:
    r"""LiBI's stage-1 loss :math:`L(B)` on the minibatch ``x`` (module docstring).

    ``nll`` is the mean over the rows of :math:`-\log p(x_n \mid f(h(x_n)))`; ``hz_penalty`` is
    ``hz_weight · exp(HZ(Z))``, ``cov_penalty`` ``exp(‖Σ̂ − I‖²_F / cov_scale)`` with
    ``Σ̂ = (Z − Z̄)ᵀ(Z − Z̄) / |B|``, ``mean_penalty`` ``exp(‖Z̄‖² / mean_scale)``.
    """
    z = code_network(x)
    nll = -likelihood(decoder(z)).log_prob(x).mean()
    mean = z.mean(0)
    centred = z - mean
    cov = centred.T @ centred / z.shape[0]
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    hz = hz_weight * torch.exp(henze_zirkler(z))
    cov_pen = torch.exp(((cov - eye) ** 2).sum() / cov_scale)
    mean_pen = torch.exp((mean**2).sum() / mean_scale)
    return CodeLoss(nll + hz + cov_pen + mean_pen, nll, hz, cov_pen, mean_pen)


def _register(name: str, module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # frozen parameters stay out of the store and out of training, silently
        warnings.filterwarnings("ignore", message=_FROZEN, category=UserWarning)
        return pyro.module(name, module)


class LiBICodeModel(nn.Module):
    """Stage 1's "model": the decoder :math:`f_\\theta`, the likelihood and the ``(N, D)`` data.

    Attributes:
        decoder_passes: Decoder rows run by :class:`LiBICodeLoss` (``fit`` divides by the points seen).
    """

    name = "decoder"

    def __init__(self, decoder: nn.Module, data: Tensor, likelihood: Likelihood) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood
        self.data = data
        self.decoder_passes = 0

    def forward(self, batch_idx: Tensor | None = None) -> nn.Module:
        """Registers the decoder with ``pyro.module`` as ``"decoder"`` and returns it (``batch_idx`` is unused)."""
        return _register(self.name, self.decoder)


class LiBICodeGuide(nn.Module):
    """Stage 1's "guide": the code network :math:`h_\\varphi` (``(…, D) -> (…, d)``) and the same data.

    Attributes:
        encoder_passes: Code-network rows run by :class:`LiBICodeLoss`.
    """

    name = "libi_code_network"

    def __init__(self, code_network: nn.Module, data: Tensor) -> None:
        super().__init__()
        self.code_network = code_network
        self.data = data
        self.encoder_passes = 0

    def forward(self, batch_idx: Tensor | None = None) -> nn.Module:
        """Registers the code network with ``pyro.module`` as ``"libi_code_network"`` and returns it."""
        return _register(self.name, self.code_network)


class LiBICodeLoss(ELBO):
    """:math:`N \\cdot L(B)` (module docstring) with Pyro's loss interface, for :class:`LiBICodeModel` and
    :class:`LiBICodeGuide`.

    ``loss`` and ``differentiable_loss`` evaluate the rows ``batch_idx`` as given. ``loss_and_grads``
    (what ``SVI.step`` calls) also follows the epoch: it expects each epoch's minibatches to partition
    ``range(N)``, as :func:`~pyro_mapa.training.fit` draws them, and merges a last minibatch of fewer than
    ``latent_dim + 2`` rows into the one before (module docstring). It records what stage 1 reports.

    Arguments:
        latent_dim: ``d`` (the code network's outputs).
        hz_weight, cov_scale, mean_scale: ``ε_HZ``, ``ε_Σ``, ``ε_μ`` of :func:`libi_code_loss`.

    Attributes:
        epoch_losses: Per completed epoch, the mean of :math:`L(B)` over its gradient steps.
        steps: Gradient steps taken (a merged pair of minibatches is one step).
    """

    def __init__(self, latent_dim: int, *, hz_weight: float, cov_scale: float, mean_scale: float) -> None:
        super().__init__(num_particles=1)
        self.min_rows = latent_dim + 2
        self.weights = {"hz_weight": hz_weight, "cov_scale": cov_scale, "mean_scale": mean_scale}
        self.epoch_losses: list[float] = []
        self.steps = 0
        self._seen, self._pending, self._sum, self._count = 0, None, 0.0, 0

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("LiBICodeLoss samples nothing, so it has no traces: call loss or loss_and_grads")

    def evaluate(self, model: LiBICodeModel, guide: LiBICodeGuide, batch_idx: Tensor) -> CodeLoss:
        """:func:`libi_code_loss` on the rows ``batch_idx`` (registering both networks, counting their rows)."""
        decoder, code_network = model(batch_idx), guide(batch_idx)
        x = model.data[batch_idx.to(model.data.device)]
        out = libi_code_loss(decoder, code_network, x, model.likelihood, **self.weights)
        model.decoder_passes += x.shape[0]
        guide.encoder_passes += x.shape[0]
        return out

    def differentiable_loss(self, model, guide, batch_idx: Tensor, *args, **kwargs) -> Tensor:
        """:math:`N \\cdot L(B)` on the rows ``batch_idx``, differentiable."""
        return len(model.data) * self.evaluate(model, guide, batch_idx).total

    def loss(self, model, guide, batch_idx: Tensor, *args, **kwargs) -> float:
        """:math:`N \\cdot L(B)` on the rows ``batch_idx``, a float (no gradients)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, batch_idx))

    def loss_and_grads(self, model, guide, batch_idx: Tensor, *args, **kwargs) -> float:
        """One step's :math:`N \\cdot L(B)`, its gradients accumulated (0, none, for a minibatch put off to merge)."""
        n = len(model.data)
        self._seen += len(batch_idx)
        left = n - self._seen
        if left < 0:
            raise ValueError(f"LiBICodeLoss: an epoch's minibatches cover {self._seen} rows but the data has {n}: "
                             "it expects them to partition range(N), as fit draws them")
        if self._pending is not None:
            batch_idx, self._pending = torch.cat([self._pending, batch_idx]), None
        elif 0 < left < self.min_rows:
            self._pending = batch_idx  # the rest is too short for HZ: merged into the next step
            return 0.0
        total = self.evaluate(model, guide, batch_idx).total
        total.backward()
        value = float(total.detach())
        self.steps += 1
        self._sum, self._count = self._sum + value, self._count + 1
        if left == 0:
            self.epoch_losses.append(self._sum / self._count)
            self._seen, self._sum, self._count = 0, 0.0, 0
        return n * value


def _keys(name: str, module: nn.Module) -> list[tuple[str, Tensor]]:
    return [(f"{name}$$${k}", p) for k, p in module.named_parameters()]


def check_stage1_param_store(decoder: nn.Module, code_network: nn.Module) -> None:
    """Refuses a param store that holds other tensors under stage 1's names (SVI would step those instead).

    Raises:
        ValueError: naming the entry and ``pyro.clear_param_store()``.
    """
    store = pyro.get_param_store()
    for key, p in _keys(LiBICodeModel.name, decoder) + _keys(LiBICodeGuide.name, code_network):
        if key in store and store[key] is not p:
            raise ValueError(
                f"the param store already holds {key!r} from another network, which SVI would train instead "
                "of this one in LiBI's stage 1; call pyro.clear_param_store() before fit_libi"
            )


def remove_stage1_params(before: set[str]) -> None:
    """Deletes the stage-1 entries (``"decoder$$$…"``, ``"libi_code_network$$$…"``) not in ``before``."""
    store = pyro.get_param_store()
    prefixes = (f"{LiBICodeModel.name}$$$", f"{LiBICodeGuide.name}$$$")
    for key in [k for k in store.keys() if k.startswith(prefixes) and k not in before]:
        del store[key]
