"""ExactDecoder: the decoder trained on the exact likelihood by quadrature, then an encoder for it.

A two-stage method that removes the inference network's influence on the generative model
entirely (our early reading of the LiBI abstract, Yacoby, Pan and Doshi-Velez 2020; the paper's
own algorithm, with point codes and normality penalties, is :func:`~pyro_mapa.training.fit_libi`):

1. **Stage 1** maximizes :math:`\\sum_n \\log \\int p_\\theta(x_n \\mid f_\\theta(z))\\, \\mathcal N(z; 0, I)\\, dz`
   over the decoder alone, with Adam on minibatches (loss :math:`-\\frac{N}{B} \\sum_{n \\in B} \\log p_\\theta(x_n)`).
   The integral is a trapezoid sum on a grid for ``d ≤ 2`` (exact to the grid error; by default
   the grid is shifted at random every step, which makes the sum an unbiased estimate of
   :math:`p_\\theta(x)` and keeps the decoder from exploiting fixed nodes) and a many-sample
   importance-sampled estimate with the prior as proposal for ``d > 2`` (a lower bound whose
   gap is :math:`O(1/S)`, see :func:`~pyro_mapa.evaluation.importance_log_marginal`).
2. **Stage 2** freezes the decoder and fits a :class:`~pyro_mapa.MeanFieldGuide` (or any guide)
   to its posterior with ``Trace_ELBO`` or :class:`~pyro_mapa.TraceIWAE_ELBO` via ``pyro.infer.SVI``:
   with :math:`\\theta` fixed, maximizing the ELBO is minimizing
   :math:`\\sum_n \\mathrm{KL}(q_\\phi(z \\mid x_n) \\,\\|\\, p_\\theta(z \\mid x_n))`.

References:
    | Characterizing and Avoiding Problematic Global Optima of Variational Autoencoders
    | (Yacoby, Pan and Doshi-Velez, AABI 2019, PMLR 118, 2020) https://arxiv.org/abs/2003.07756
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import NonFiniteLossError, check_nonnegative_int, check_positive_int
from ..evaluation.importance import check_data
from ..evaluation.latent_posterior import LatentGrid, grid_log_marginal, importance_log_marginal, latent_grid
from ..infer.iwae_elbo import TraceIWAE_ELBO
from ..models.likelihoods import Likelihood
from ..models.networks import mlp
from ..models.vae import MeanFieldGuide, VAEModel, check_decoder_input
from .fit import FitResult, fit
from .threads import torch_threads

__all__ = ["ExactDecoderResult", "fit_exact_decoder", "marginal_nll"]

_METHODS = ("auto", "quadrature", "grid", "importance")


def _resolve_method(method: str, latent_dim: int) -> str:
    if method not in _METHODS:
        raise ValueError(f"likelihood_method must be one of {', '.join(_METHODS)}, got {method!r}")
    if method == "auto":
        return "grid" if latent_dim <= 2 else "importance"
    if method == "quadrature" and latent_dim != 1:
        raise ValueError(f"likelihood_method='quadrature' needs latent_dim 1, got {latent_dim}; use 'grid' or 'importance'")
    if method == "grid" and latent_dim > 2:
        raise ValueError(f"likelihood_method='grid' needs latent_dim 1 or 2, got {latent_dim}; use 'importance'")
    return "grid" if method == "quadrature" else method


def marginal_nll(
    decoder: Callable[[Tensor], Tensor],
    x: Tensor,
    likelihood: Likelihood,
    latent_dim: int,
    *,
    num_data: int | None = None,
    method: str = "auto",
    grid: LatentGrid | None = None,
    num_is_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ExactDecoder's stage-1 loss :math:`-\\frac{N}{B} \\sum_{n \\in B} \\log p_\\theta(x_n)`, differentiable in the decoder.

    Arguments:
        decoder: ``f_θ``, maps ``(..., d)`` latents to likelihood parameters.
        x: ``(B, D)`` minibatch.
        likelihood: The observation model.
        latent_dim: ``d``; the prior is :math:`\\mathcal N(0, I)`.
        num_data: ``N`` (default ``B``: the plain sum).
        method: ``"auto"`` (grid for ``d ≤ 2``), ``"quadrature"`` (``d = 1``), ``"grid"`` or ``"importance"``.
        grid: For the grid methods (default ``latent_grid(d)``, standard-normal prior).
        num_is_samples: ``S`` prior draws per point for ``"importance"``.
        generator: For the importance draws.
    """
    x = check_data(x)
    d = check_positive_int(latent_dim, "latent_dim")
    method = _resolve_method(method, d)
    scale = (x.shape[0] if num_data is None else check_positive_int(num_data, "num_data")) / x.shape[0]
    if method == "importance":
        log_px = importance_log_marginal(x, decoder, likelihood, d, num_is_samples, generator=generator).log_px
    else:
        log_px = grid_log_marginal(x, decoder, likelihood, grid, latent_dim=d)
    return -scale * log_px.sum()


def _shifted_grid(latent_dim: int, num_points: int | None, shift: Tensor) -> LatentGrid:
    """The default standard-normal grid with its bounds moved by ``shift`` (``(d,)``)."""
    bound = 8.0 if latent_dim == 1 else 7.0
    return latent_grid(latent_dim, num_points, (shift - bound).tolist(), (shift + bound).tolist())


@dataclass
class ExactDecoderResult:
    """What :func:`fit_exact_decoder` trained and measured.

    ``model``, ``guide`` and ``stage2_loss`` are an ordinary VAE triple (decoder with an
    :math:`\\mathcal N(0, I)` prior, amortized guide): evaluate them like any method.

    Attributes:
        stage1_losses: Per epoch, the mean of :math:`-\\log p_\\theta(x_n)` per point over its minibatches.
        stage2_losses: Per epoch, the stage-2 SVI loss per point (a negative ELBO or IWAE bound).
        stage2: The :class:`~pyro_mapa.training.FitResult` of stage 2.
        stage1_seconds: Wall-clock time of stage 1.
        stage1_decoder_passes_per_point: Decoder rows per data point per stage-1 step
            (grid nodes or ``S·B`` importance draws, divided by ``B``).
        likelihood_method: ``"grid"`` or ``"importance"``.
    """

    model: VAEModel
    guide: Callable
    stage2_loss: ELBO
    decoder: nn.Module
    encoder: nn.Module | None
    likelihood: Likelihood
    latent_dim: int
    likelihood_method: str
    stage1_losses: list[float] = field(default_factory=list)
    stage2_losses: list[float] = field(default_factory=list)
    stage2: FitResult | None = None
    stage1_seconds: float = 0.0
    stage1_decoder_passes_per_point: float = 0.0


def _check_param_store(prefix: str, module: nn.Module) -> None:
    store = pyro.get_param_store()
    for name, p in module.named_parameters():
        key = f"{prefix}$$${name}"
        if key in store and store[key] is not p:
            raise ValueError(
                f"the param store already holds {key!r} from another network, which SVI would train instead "
                "of this one; call pyro.clear_param_store() before fit_exact_decoder"
            )


def fit_exact_decoder(
    decoder: nn.Module,
    data: Tensor,
    likelihood: Likelihood,
    latent_dim: int,
    *,
    encoder: nn.Module | None = None,
    guide: Callable | None = None,
    stage1_epochs: int = 100,
    stage2_epochs: int = 100,
    stage2_loss: str = "elbo",
    num_particles: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    likelihood_method: str = "auto",
    num_points: int | None = None,
    grid_jitter: bool = True,
    num_is_samples: int = 1000,
    hidden: tuple[int, ...] = (50, 50),
    seed: int = 0,
    progress: bool = False,
    num_threads: int | None = None,
) -> ExactDecoderResult:
    """Trains ``decoder`` on its exact likelihood: stage 1 on the log-likelihood, stage 2 an encoder on the frozen decoder.

    Arguments:
        decoder: ``f_θ``, ``(..., d) -> (..., D)``; trained in place in stage 1, never in stage 2.
        data: ``(N, D)`` training data.
        likelihood: The observation model.
        latent_dim: ``d``.
        encoder: ``(..., D) -> (..., 2d)`` for the :class:`~pyro_mapa.MeanFieldGuide` (default a
            fresh ``mlp(D, 2d, hidden)`` seeded by ``seed``).
        guide: Any guide ``guide(batch_idx)`` with a local site ``"z"`` in plate ``"data"``,
            instead of the mean-field one.
        stage1_epochs, stage2_epochs: Epochs of each stage (0 skips it).
        stage2_loss: ``"elbo"`` (``Trace_ELBO``) or ``"iwae"`` (``TraceIWAE_ELBO(num_particles)``).
        batch_size, lr: Minibatch size and Adam learning rate of both stages.
        likelihood_method: ``"auto"``, ``"quadrature"`` (``d = 1``), ``"grid"`` (``d ≤ 2``) or
            ``"importance"`` (any ``d``).
        num_points: Grid nodes per dimension (default: 2001 for ``d = 1``, 301 for ``d = 2``).
        grid_jitter: Shift the grid by a uniform random fraction of its spacing every step.
        num_is_samples: Prior draws per point per step for ``"importance"``.
        seed: Seeds the encoder initialization, stage 1's minibatches, jitter and draws, and
            stage 2 (via :func:`~pyro_mapa.training.fit`, which sets Pyro's global seed).
        progress: Show tqdm bars ("ExactDecoder stage 1", "ExactDecoder stage 2"), left on screen.
        num_threads: Torch intra-op threads during both stages, restored afterwards (the policy of
            :mod:`pyro_mapa.training.threads`: default one thread unless ``OMP_NUM_THREADS`` is set).

    Raises:
        NonFiniteLossError: Stage 1's loss became NaN or infinite (the epoch is named).
    """
    data = check_data(data, "data")
    d = check_positive_int(latent_dim, "latent_dim")
    method = _resolve_method(likelihood_method, d)
    for value, name in ((stage1_epochs, "stage1_epochs"), (stage2_epochs, "stage2_epochs")):
        check_nonnegative_int(value, name)
    check_positive_int(batch_size, "batch_size")
    if stage2_loss not in ("elbo", "iwae"):
        raise ValueError(f"stage2_loss must be 'elbo' or 'iwae', got {stage2_loss!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if encoder is not None and guide is not None:
        raise ValueError("pass encoder or guide, not both")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (it seeds stage 1's own generator), got {seed!r}")
    if not isinstance(decoder, nn.Module):
        raise TypeError(f"decoder must be a torch.nn.Module (e.g. mlp(latent_dim, D)), got {type(decoder).__name__}")
    check_decoder_input(decoder, d)
    with torch_threads(num_threads):
        return _fit_exact_decoder(decoder, data, likelihood, d, method, encoder, guide, stage1_epochs, stage2_epochs,
                         stage2_loss, num_particles, batch_size, lr, num_points, grid_jitter, num_is_samples, hidden,
                         seed, progress)


def _fit_exact_decoder(decoder, data, likelihood, d, method, encoder, guide, stage1_epochs, stage2_epochs, stage2_loss,
              num_particles, batch_size, lr, num_points, grid_jitter, num_is_samples, hidden, seed,
              progress) -> ExactDecoderResult:
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    dev_gen = gen if data.device.type == "cpu" else torch.Generator(device=data.device).manual_seed(seed)
    grid = latent_grid(d, num_points) if method == "grid" else None
    h = float(grid.z[1, -1] - grid.z[0, -1]) if grid is not None else 0.0

    # Stage 1: the decoder alone, on the (grid or importance-sampled) log-likelihood.
    params = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in tqdm(range(stage1_epochs), desc="ExactDecoder stage 1", disable=not progress, leave=True):
        total = data.new_zeros(())
        batches = torch.randperm(n, generator=gen).to(data.device).split(batch_size)
        for idx in batches:
            step_grid = grid
            if grid is not None and grid_jitter:
                step_grid = _shifted_grid(d, num_points, torch.rand(d, generator=gen, dtype=torch.float64) * h)
            loss = marginal_nll(
                decoder, data[idx], likelihood, d, num_data=n, method=method, grid=step_grid,
                num_is_samples=num_is_samples, generator=dev_gen,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total = total + loss.detach() / n
        losses.append(float(total) / len(batches))
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(f"ExactDecoder stage 1: the log-likelihood is {losses[-1]} in epoch {epoch}")
    for p in params:
        p.grad = None
    stage1_seconds = time.perf_counter() - start
    rows = len(grid.z) if grid is not None else num_is_samples * min(batch_size, n)
    passes = rows / min(batch_size, n)

    # Stage 2: the decoder frozen (not registered with Pyro, no gradients, eval mode).
    if guide is None:
        if encoder is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                encoder = mlp(data.shape[1], 2 * d, hidden)
            encoder = encoder.to(data.device, data.dtype)
        _check_param_store("encoder", encoder)
        guide = MeanFieldGuide(encoder, data, d)
    model = VAEModel(decoder, data, d, likelihood)
    loss_fn: ELBO = (
        Trace_ELBO(max_plate_nesting=1) if stage2_loss == "elbo" else TraceIWAE_ELBO(num_particles, max_plate_nesting=1)
    )
    flags = [p.requires_grad for p in decoder.parameters()]
    was_training = decoder.training
    decoder.requires_grad_(False).eval()
    try:
        stage2 = fit(model, guide, loss_fn, n, epochs=stage2_epochs, batch_size=batch_size, lr=lr, seed=seed,
                     progress=progress, desc="ExactDecoder stage 2", num_threads=torch.get_num_threads())
    finally:
        for p, flag in zip(decoder.parameters(), flags):
            p.requires_grad_(flag)
        decoder.train(was_training)
    return ExactDecoderResult(
        model, guide, loss_fn, decoder, encoder, likelihood, d, method, losses, list(stage2.epoch_losses), stage2,
        stage1_seconds, passes,
    )
