"""The VAE's model and mean-field guide, and how they compare with MAPA's.

One decoder, three ways to train it; switching is a change of guide and loss:

=========  =========================================  ==========================  =====================================
method     model                                      guide                       loss
=========  =========================================  ==========================  =====================================
VAE        :class:`VAEModel` (prior N(0, I))          :class:`MeanFieldGuide`     ``pyro.infer.Trace_ELBO()``
IWAE       :class:`VAEModel`                          :class:`MeanFieldGuide`     :class:`~pyro_mapa.TraceIWAE_ELBO`
MAPA       :class:`EmpiricalizedModel` (Eq. 6)        :class:`~pyro_mapa.MAPAGuide`  :class:`~pyro_mapa.TraceMAPA_ELBO`
=========  =========================================  ==========================  =====================================

Models and guides are ``nn.Module`` s that register their networks with
``pyro.module`` when called (as in Pyro's VAE tutorial), so ``.to(device)`` and
``state_dict`` work and SVI finds every parameter. Every call takes
``batch_idx`` (a tensor of data indices, or ``None`` for all ``N``; a list or NumPy
array of integers is converted, negative or too large indices are refused).

Switching from MAPA to a VAE or an IWAE over the same data::

    latent_dim = 1
    model = VAEModel(mlp(latent_dim, D), X, latent_dim, NormalLikelihood(sigma))
    guide = MeanFieldGuide(mlp(D, 2 * latent_dim), X, latent_dim)   # 2·d outputs: loc, pre-softplus scale
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())    # or TraceIWAE_ELBO(num_particles=10)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import as_data_tensor, as_index_tensor, call_network, check_matches_networks, check_positive_int
from .likelihoods import BernoulliLikelihood, Likelihood, NormalLikelihood

__all__ = ["MeanFieldGuide", "VAEModel", "check_decoder_input", "check_decoder_output", "check_guide_data",
           "check_same_data"]


class VAEModel(nn.Module):
    """The original model (Eq. 1): :math:`z_n \\sim \\mathcal N(0, I)`, :math:`x_n \\sim p_\\theta(x \\mid f_\\theta(z_n))`.

    Arguments:
        decoder: ``f_θ``, ``(…, d) -> (…, D)``, e.g. ``mlp(latent_dim, D)``.
        data: ``(N, D)`` observations of the decoder's dtype and device (a NumPy array is
            converted to the decoder's dtype; a float64 tensor with a float32 decoder is refused).
        latent_dim: ``d``.
        likelihood: A :class:`~pyro_mapa.models.likelihoods.Likelihood`, e.g.
            ``NormalLikelihood(sigma)``.
    """

    def __init__(self, decoder: nn.Module, data: Tensor, latent_dim: int, likelihood: Likelihood) -> None:
        super().__init__()
        if not isinstance(decoder, nn.Module):
            raise TypeError(f"decoder must be a torch.nn.Module (e.g. mlp(latent_dim, D)), got {type(decoder).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyro_mapa Likelihood (e.g. NormalLikelihood(sigma)), got {type(likelihood).__name__}"
            )
        self.decoder = decoder
        self.register_buffer("data", as_data_tensor(data, "data", networks={"decoder": decoder}))
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.likelihood = likelihood
        self.decoder_passes = 0

    def forward(self, batch_idx: Tensor | Any | None = None) -> Tensor:
        if batch_idx is not None:
            batch_idx = as_index_tensor(batch_idx, len(self.data), "batch_idx", device=self.data.device,
                                        per_step=True)
        check_matches_networks(self.data, {"decoder": self.decoder}, "VAEModel.data")
        pyro.module("decoder", self.decoder)
        zeros = self.data.new_zeros(self.latent_dim)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            params = call_network(self.decoder, z, "decoder", f"mlp({self.latent_dim}, D)")
            check_decoder_output(params, self.data, self.likelihood)
            self.decoder_passes += params[..., 0].numel()
            return pyro.sample("x", self.likelihood(params), obs=self.data[idx])


class MeanFieldGuide(nn.Module):
    """Mean-field Gaussian :math:`q_\\phi(z_n \\mid x_n) = \\mathcal N(\\mu_\\phi(x_n), \\mathrm{diag}\\,\\sigma^2_\\phi(x_n))`.

    The encoder outputs ``2·d`` numbers per point: the first ``d`` are the location
    :math:`\\mu`, the last ``d`` the pre-softplus scale,
    :math:`\\sigma = \\mathrm{softplus}(\\cdot) + 10^{-5}`. Build it as
    ``mlp(D, 2 * latent_dim)``.

    Arguments:
        encoder: ``(…, D) -> (…, 2d)``: location and pre-softplus scale.
        data: ``(N, D)`` observations (the same tensor as the model's).
        latent_dim: ``d``.
    """

    def __init__(self, encoder: nn.Module, data: Tensor, latent_dim: int) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"encoder must be a torch.nn.Module (e.g. mlp(D, 2 * latent_dim)), got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.register_buffer("data", as_data_tensor(data, "data", networks={"encoder": encoder}))
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.encoder_passes = 0

    def distribution(self, x: Tensor) -> dist.TorchDistribution:
        """:math:`q(z \\mid x)` for observations ``x`` of shape ``(…, D)``."""
        out = call_network(self.encoder, x, "encoder", f"mlp({x.shape[-1]}, {2 * self.latent_dim})")
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder outputs {out.shape[-1]} numbers per point but MeanFieldGuide needs "
                f"2 * latent_dim = {2 * self.latent_dim} (the location, then the pre-softplus scale); "
                f"build it as mlp(D, 2 * latent_dim)"
            )
        loc, raw_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)

    def forward(self, batch_idx: Tensor | Any | None = None) -> Tensor:
        if batch_idx is not None:
            batch_idx = as_index_tensor(batch_idx, len(self.data), "batch_idx", device=self.data.device,
                                        per_step=True)
        check_matches_networks(self.data, {"encoder": self.encoder}, "MeanFieldGuide.data")
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(self.data), subsample=batch_idx) as idx:
            x = self.data[idx]
            self.encoder_passes += x.shape[0]
            return pyro.sample("z", self.distribution(x))


def check_decoder_output(params: Tensor, data: Tensor, likelihood: Likelihood) -> None:
    """For the built-in likelihoods, the decoder must output one parameter per data column."""
    if isinstance(likelihood, (NormalLikelihood, BernoulliLikelihood)) and params.shape[-1] != data.shape[-1]:
        raise ValueError(
            f"the decoder outputs {params.shape[-1]} numbers per point but the data has {data.shape[-1]} "
            f"columns; {type(likelihood).__name__} needs one per column: build it as mlp(latent_dim, {data.shape[-1]})"
        )


def check_same_data(guide_data: Tensor, model_data: Tensor, guide_name: str, example: str | None = None) -> None:
    """Raises unless the guide's data is the model's: the same tensor, or equal shape and values.

    One comparison of the values at most (none when both are the same tensor), so call it
    once per model/guide pair, not every step.

    Raises:
        ValueError: other shape or other values, naming the guide's ``data`` argument.
    """
    if guide_data is model_data:
        return
    example = example or f"{guide_name}(encoder, X, latent_dim)"
    fix = f"pass the model's data tensor to the guide, e.g. {example} with the X of VAEModel(decoder, X, latent_dim, likelihood)"
    if guide_data.shape != model_data.shape:
        raise ValueError(
            f"{guide_name}'s data (its data argument) has shape {tuple(guide_data.shape)} but the model's data "
            f"has shape {tuple(model_data.shape)}: the guide's plate would scale a minibatch of B points by "
            f"{guide_data.shape[0]}/B and the model's by {model_data.shape[0]}/B; {fix}"
        )
    same_storage = (
        guide_data.device == model_data.device and guide_data.dtype == model_data.dtype
        and guide_data.data_ptr() == model_data.data_ptr() and guide_data.stride() == model_data.stride()
    )
    if same_storage:
        return
    with torch.no_grad():
        other = model_data.to(guide_data.device, guide_data.dtype)
        differs = (guide_data != other).reshape(guide_data.shape[0], -1).any(1)
    if bool(differs.any()):
        first = int(differs.nonzero()[0, 0])
        raise ValueError(
            f"{guide_name}'s data (its data argument) differs from the model's data in {int(differs.sum())} of "
            f"{guide_data.shape[0]} rows (first: row {first}): the encoder would see other points than the "
            f"model scores; {fix}"
        )


def check_guide_data(model: Any, guide: Any) -> None:
    """:func:`check_same_data` for a model and guide that both hold a ``data`` tensor (else nothing)."""
    model_data, guide_data = getattr(model, "data", None), getattr(guide, "data", None)
    if isinstance(model_data, Tensor) and isinstance(guide_data, Tensor):
        check_same_data(guide_data, model_data, type(guide).__name__)


def _expected_input_size(decoder: nn.Module) -> int | None:
    """The input size of the decoder's first linear layer, if it has one."""
    for module in decoder.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    return None


def check_decoder_input(decoder: nn.Module, latent_dim: int, name: str = "decoder") -> int:
    """Runs ``decoder`` once on a ``(1, latent_dim)`` zero code; returns its output size.

    Raises:
        ValueError: the decoder cannot take ``latent_dim`` inputs, naming the size it expects.
    """
    p = next((q for q in decoder.parameters() if q.is_floating_point()), None)
    z = torch.zeros(1, latent_dim, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else None)
    try:
        with torch.no_grad():
            out = decoder(z)
    except RuntimeError as e:
        if "shapes cannot be multiplied" not in str(e) and "size mismatch" not in str(e):
            raise
        expected = _expected_input_size(decoder)
        size = f"inputs of size {expected}" if expected is not None else "inputs of another size"
        fix = f"latent_dim={expected}" if expected is not None else "latent_dim=<the decoder's input size>"
        raise ValueError(
            f"the {name} expects {size} but latent_dim is {latent_dim}: pass {fix} "
            f"or a {name} built as mlp({latent_dim}, D)"
        ) from e
    return int(out.shape[-1])
