"""LiBI, "Likelihood Before Inference" (Yacoby, Pan and Doshi-Velez 2020), as the paper describes it.

The paper traces two failures of VAE training (codes the decoder ignores; an aggregate posterior
unlike the prior) to the ELBO's preference for generative models whose posteriors are easy to
approximate. LiBI fits the generative model without the inference model, then the inference model
for the frozen generative model, in ``R`` rounds (docs/method.md §10.4):

1. **Stage 1, generative model and point codes.** Over the decoder :math:`f_\\theta` and a *code
   network* :math:`h_\\varphi` (the inference network's architecture, ``d`` outputs), minimize on each
   minibatch :math:`B` with codes :math:`Z = \\{h_\\varphi(x_n)\\}_{n \\in B}`

   .. math::

       -\\frac1{|B|} \\sum_{n \\in B} \\log p(x_n \\mid f_\\theta(h_\\varphi(x_n)))
       + \\epsilon_{HZ}\\, e^{HZ(Z)} + e^{\\|\\hat\\Sigma(Z) - I\\|_F^2 / \\epsilon_\\Sigma}
       + e^{\\|\\hat\\mu(Z)\\|^2 / \\epsilon_\\mu},

   :math:`HZ` the Henze–Zirkler statistic (:func:`~pyro_mapa.diagnostics.henze_zirkler`),
   :math:`\\hat\\mu, \\hat\\Sigma` the codes' mean and covariance. The prior term is dropped on purpose:
   joint MAP of :math:`\\theta` and :math:`z` would shrink the codes. As printed in the paper,
   :math:`\\epsilon_{HZ}` multiplies while :math:`\\epsilon_\\Sigma, \\epsilon_\\mu` divide.
2. **Stage 2, inference model.** With :math:`\\theta` frozen, maximize the ordinary ELBO (or the IWAE
   bound) over the mean-field encoder :math:`q_\\phi` only.
3. **Rounds.** Round ``t + 1``'s code network starts from round ``t``'s inference network's mean head;
   the round with the best validation log-likelihood is returned.

Our choices where the paper is silent (also in :func:`fit_libi`): Adam for both stages, one fresh
optimizer per stage per round (both stages run :func:`~pyro_mapa.training.fit`, stage 1 with
:class:`~pyro_mapa.training.libi_loss.LiBICodeLoss`); penalties on each minibatch's codes (a last
minibatch of fewer than ``d + 2`` rows is merged into the one before, so that ``HZ`` is defined);
:math:`\\hat\\Sigma` normalized by ``|B|`` (as ``HZ`` is); the encoder carried over from round to round
(warm start); round 1's default code network is the initial encoder's mean head (the
re-initialization rule applied at round 1 too); validation log-likelihood exact on a grid for
``d ≤ 2``, by importance sampling with a fitted proposal for ``d > 2``.

References:
    | Characterizing and Avoiding Problematic Global Optima of Variational Autoencoders
    | (Yacoby, Pan and Doshi-Velez, AABI 2019, PMLR 118, 2020) https://arxiv.org/abs/2003.07756
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn

from ..errors import NonFiniteLossError, check_nonnegative_int, check_positive_int
from ..evaluation.importance import check_data
from ..infer.iwae_elbo import TraceIWAE_ELBO
from ..models.likelihoods import Likelihood
from ..models.networks import mlp
from ..models.vae import MeanFieldGuide, VAEModel, check_decoder_input
from ..priors.learned_model import LearnedModel
from .exact_decoder import _check_param_store
from .fit import FitResult, fit
from .libi_loss import (
    CodeLoss,
    LiBICodeGuide,
    LiBICodeLoss,
    LiBICodeModel,
    check_stage1_param_store,
    libi_code_loss,
    remove_stage1_params,
)
from .threads import torch_threads

__all__ = ["CodeLoss", "LiBIResult", "LiBIRound", "fit_libi", "libi_code_loss", "load_mean_head"]


def _mean_head_state(encoder: nn.Module, code_network: nn.Module, latent_dim: int) -> dict[str, Tensor]:
    enc, code = encoder.state_dict(), code_network.state_dict()
    if list(enc) != list(code):
        raise ValueError(
            "code_network must have the encoder's architecture with d outputs (e.g. mlp(D, latent_dim, hidden) "
            f"beside mlp(D, 2 * latent_dim, hidden)): their parameter names differ ({list(code)} vs {list(enc)})"
        )
    out = {}
    for key, c in code.items():
        e = enc[key]
        if e.shape == c.shape:
            out[key] = e.detach().clone()
        elif c.dim() >= 1 and c.shape[0] == latent_dim and e.shape[0] == 2 * latent_dim and e.shape[1:] == c.shape[1:]:
            out[key] = e.detach()[:latent_dim].clone()  # the location rows of the last layer
        else:
            raise ValueError(
                f"code_network's {key} has shape {tuple(c.shape)}, the encoder's {tuple(e.shape)}: the code network "
                "must be the encoder's architecture with latent_dim outputs instead of 2 * latent_dim"
            )
    return out


def load_mean_head(code_network: nn.Module, encoder: nn.Module, latent_dim: int) -> None:
    """Sets ``code_network`` to the encoder's mean head: every parameter copied, the output layer's first ``d`` rows.

    The encoder is a :class:`~pyro_mapa.MeanFieldGuide` encoder (``2d`` outputs, location first);
    the code network has its architecture with ``d`` outputs.

    Raises:
        ValueError: The two architectures do not match so.
    """
    code_network.load_state_dict(_mean_head_state(encoder, code_network, latent_dim))


@dataclass
class LiBIRound:
    """One round: stage 1's and stage 2's per-epoch losses and the selection log-likelihood.

    Attributes:
        stage1_losses: Per epoch, the mean over its gradient steps of :func:`libi_code_loss`'s total.
        stage2_losses: Per epoch, the stage-2 SVI loss per point.
        log_likelihood: Mean per-point log-likelihood of the selection data after the round
            (``None`` when nothing was selected: one round and no ``valid_data``).
        stage2: Stage 2's :class:`FitResult`.
        stage1: Stage 1's :class:`FitResult` (its ``fit`` run with
            :class:`~pyro_mapa.training.libi_loss.LiBICodeLoss`; ``epoch_losses`` is ``stage1_losses``,
            ``steps`` the gradient steps; one code-network and one decoder row per point per step).
    """

    stage1_losses: list[float] = field(default_factory=list)
    stage2_losses: list[float] = field(default_factory=list)
    log_likelihood: float | None = None
    stage2: FitResult | None = None
    stage1: FitResult | None = None


@dataclass
class LiBIResult:
    """What :func:`fit_libi` trained: the best round's networks (loaded in place) and every round's trace.

    ``model``, ``guide`` and ``stage2_loss`` are an ordinary VAE triple (decoder with an
    :math:`\\mathcal N(0, I)` prior, mean-field guide): evaluate them like any method.
    ``selection`` says what chose the round: ``"valid"``, ``"train"`` (no ``valid_data``, several
    rounds) or ``"none"``.
    """

    model: VAEModel
    guide: MeanFieldGuide
    stage2_loss: ELBO
    decoder: nn.Module
    encoder: nn.Module
    code_network: nn.Module
    likelihood: Likelihood
    latent_dim: int
    rounds: list[LiBIRound]
    best_round: int
    selection: str
    stage1_seconds: float = 0.0
    stage1_steps: int = 0

    @property
    def epoch_losses(self) -> list[float]:
        """Every epoch's loss in order (round 1 stage 1, round 1 stage 2, round 2 ...): see :attr:`epoch_stages`."""
        return [v for r in self.rounds for v in r.stage1_losses + r.stage2_losses]

    @property
    def epoch_stages(self) -> list[str]:
        """The stage of each entry of :attr:`epoch_losses`: ``"stage k"`` (one round) or ``"round t stage k"``."""
        out = []
        for t, r in enumerate(self.rounds, 1):
            pre = "" if len(self.rounds) == 1 else f"round {t} "
            out += [pre + "stage 1"] * len(r.stage1_losses) + [pre + "stage 2"] * len(r.stage2_losses)
        return out


def _positive(value, name: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number ({fix}), got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number ({fix}), got {value!r}")
    return float(value)


def _check_outputs(net: nn.Module, x: Tensor, size: int, name: str, example: str) -> None:
    with torch.no_grad():
        out = net(x[:2])
    if out.shape[-1] != size:
        raise ValueError(f"{name} outputs {out.shape[-1]} numbers per point, LiBI needs {size}: build it as {example}")


def _stage1(decoder, code_network, data, likelihood, d, weights, epochs, batch_size, lr, seed, desc, progress):
    """Stage 1 of one round through :func:`fit` (a fresh Adam over decoder and code network, minibatches seeded
    by ``seed``) with :class:`~pyro_mapa.training.libi_loss.LiBICodeLoss`; returns its :class:`FitResult`, whose
    ``epoch_losses`` and ``steps`` are the loss's (a merged pair of minibatches is one step)."""
    model, guide = LiBICodeModel(decoder, data, likelihood), LiBICodeGuide(code_network, data)
    loss = LiBICodeLoss(d, **weights)
    before = set(pyro.get_param_store().keys())
    try:
        res = fit(model, guide, loss, len(data), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  progress=progress, desc=desc, num_threads=torch.get_num_threads())
    except NonFiniteLossError as e:
        raise NonFiniteLossError(
            f"LiBI {desc}, {e} (in stage 1, often the exp of a large penalty overflowing: lower lr, or raise "
            "cov_scale / mean_scale)"
        ) from e
    finally:
        remove_stage1_params(before)  # the param store as stage 1 found it
        for m in (decoder, code_network):
            for p in m.parameters():
                p.grad = None
    res.epoch_losses, res.steps = loss.epoch_losses, loss.steps
    return res


def _selection_log_likelihood(decoder, likelihood, x, latent_dim, seed) -> float:
    """Mean per-point log-likelihood of ``x`` under the decoder with its N(0, I) prior.

    Exact for ``d <= 2`` by quadrature around each posterior mode (``LearnedModel.local_log_prob``): a
    fixed grid cannot resolve the narrow posteriors of a small observation noise. Importance sampling
    with a fitted proposal for ``d > 2``.
    """
    was_training = decoder.training
    decoder.eval()
    try:
        learned = LearnedModel(decoder, likelihood, latent_dim=latent_dim)
        if latent_dim <= 2:
            return float(learned.local_log_prob(x).mean())
        est = learned.importance_log_prob(x, seed=seed)
        return float(est.log_px.mean())
    finally:
        decoder.train(was_training)


def _stage2(decoder, model, guide, loss_fn, n, epochs, batch_size, lr, seed, progress, desc) -> FitResult:
    flags = [p.requires_grad for p in decoder.parameters()]
    was_training = decoder.training
    decoder.requires_grad_(False).eval()  # θ frozen: no gradients, so Pyro's Adam never moves it
    try:
        return fit(model, guide, loss_fn, n, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                   progress=progress, desc=desc, num_threads=torch.get_num_threads())
    finally:
        for p, flag in zip(decoder.parameters(), flags):
            p.requires_grad_(flag)
        decoder.train(was_training)


def fit_libi(
    decoder: nn.Module,
    data: Tensor,
    likelihood: Likelihood,
    latent_dim: int,
    *,
    encoder: nn.Module | None = None,
    code_network: nn.Module | None = None,
    rounds: int = 1,
    hz_weight: float = 1.0,
    cov_scale: float = 0.5,
    mean_scale: float = 0.5,
    stage1_epochs: int = 100,
    stage2_epochs: int = 100,
    stage2_loss: str = "elbo",
    num_particles: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    hidden: tuple[int, ...] = (50, 50),
    valid_data: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
    num_threads: int | None = None,
) -> LiBIResult:
    """Trains ``decoder`` and an encoder by LiBI (module docstring): ``rounds`` × (stage 1, stage 2), best round kept.

    Arguments:
        decoder: ``f_θ``, ``(..., d) -> (..., D)``; trained in stage 1, frozen in stage 2.
        data: ``(N, D)`` training data.
        likelihood: The observation model (the paper fixes its σ to the truth).
        latent_dim: ``d``.
        encoder: ``(..., D) -> (..., 2d)`` for the :class:`~pyro_mapa.MeanFieldGuide` (default
            ``mlp(D, 2d, hidden)`` seeded by ``seed``); carried over from round to round.
        code_network: ``h_φ``, ``(..., D) -> (..., d)``, the encoder's architecture with ``d`` outputs
            (default ``mlp(D, d, hidden)`` set to the initial encoder's mean head). Rounds after the
            first restart it from the previous round's encoder by :func:`load_mean_head`.
        rounds: ``R ≥ 1`` (the paper's grid: 1 or 6).
        hz_weight: ``ε_HZ`` (multiplies ``exp(HZ)``; the paper's grid 0.001, 1, 10, 20).
        cov_scale, mean_scale: ``ε_Σ``, ``ε_μ`` (divide inside the exponentials; the paper's grid 0.2, 0.5).
        stage1_epochs, stage2_epochs: Epochs of each stage in every round (0 skips the stage).
        stage2_loss: ``"elbo"`` (``Trace_ELBO``) or ``"iwae"`` (``TraceIWAE_ELBO(num_particles)``).
        batch_size, lr: Minibatch size (``≥ d + 2``, for ``HZ``) and Adam learning rate of both stages.
        hidden: Hidden sizes of the default encoder and code network.
        valid_data: ``(M, D)`` points whose mean log-likelihood chooses the round (exact on a grid for
            ``d ≤ 2``; importance sampling with a fitted proposal for ``d > 2``). Without it, several
            rounds are chosen on the training data (and ``selection`` says so).
        seed: Seeds the default networks, and round ``t``'s two :func:`fit` runs (stage 1, stage 2) with
            ``seed + t - 1``.
        progress: tqdm bars per stage and round, left on screen.
        num_threads: Torch intra-op threads (policy of :mod:`pyro_mapa.training.threads`).

    Raises:
        ValueError: ``rounds < 1``; a penalty weight ``≤ 0``; a code network without ``d`` outputs or an
            encoder without ``2d``; ``batch_size < d + 2``; a stale parameter store.
        NonFiniteLossError: Stage 1's loss became NaN or infinite.
    """
    data = check_data(data, "data")
    d = check_positive_int(latent_dim, "latent_dim")
    rounds = check_positive_int(rounds, "rounds")
    weights = {"hz_weight": _positive(hz_weight, "hz_weight", "ε_HZ, e.g. 1.0"),
               "cov_scale": _positive(cov_scale, "cov_scale", "ε_Σ, e.g. 0.5"),
               "mean_scale": _positive(mean_scale, "mean_scale", "ε_μ, e.g. 0.5")}
    for value, name in ((stage1_epochs, "stage1_epochs"), (stage2_epochs, "stage2_epochs")):
        check_nonnegative_int(value, name)
    if check_positive_int(batch_size, "batch_size") < d + 2:
        raise ValueError(f"batch_size must be >= latent_dim + 2 = {d + 2} (the Henze-Zirkler penalty needs "
                         f"a nonsingular batch covariance), got {batch_size}")
    if stage2_loss not in ("elbo", "iwae"):
        raise ValueError(f"stage2_loss must be 'elbo' or 'iwae', got {stage2_loss!r}")
    _positive(lr, "lr", "Adam's learning rate, e.g. 1e-3")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(decoder, nn.Module):
        raise TypeError(f"decoder must be a torch.nn.Module (e.g. mlp(latent_dim, D)), got {type(decoder).__name__}")
    check_decoder_input(decoder, d)
    if valid_data is not None:
        valid_data = check_data(valid_data, "valid_data")
    D = data.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if encoder is None:
            encoder = mlp(D, 2 * d, hidden).to(data.device, data.dtype)
        if code_network is None:
            code_network = mlp(D, d, hidden).to(data.device, data.dtype)
            load_mean_head(code_network, encoder, d)
    _check_outputs(encoder, data, 2 * d, "encoder", f"mlp({D}, 2 * latent_dim)")
    _check_outputs(code_network, data, d, "code_network", f"mlp({D}, latent_dim), the encoder's architecture")
    if rounds > 1:
        _mean_head_state(encoder, code_network, d)  # refuse mismatched architectures before training
    _check_param_store("encoder", encoder)
    check_stage1_param_store(decoder, code_network)
    with torch_threads(num_threads):
        return _fit_libi(decoder, data, likelihood, d, encoder, code_network, rounds, weights, stage1_epochs,
                         stage2_epochs, stage2_loss, num_particles, batch_size, lr, valid_data, seed, progress)


def _fit_libi(decoder, data, likelihood, d, encoder, code_network, rounds, weights, stage1_epochs, stage2_epochs,
              stage2_loss, num_particles, batch_size, lr, valid_data, seed, progress) -> LiBIResult:
    guide = MeanFieldGuide(encoder, data, d)
    model = VAEModel(decoder, data, d, likelihood)
    loss_fn: ELBO = (
        Trace_ELBO(max_plate_nesting=1) if stage2_loss == "elbo" else TraceIWAE_ELBO(num_particles, max_plate_nesting=1)
    )
    selection = "valid" if valid_data is not None else ("train" if rounds > 1 else "none")
    select_x = valid_data if valid_data is not None else data
    history: list[LiBIRound] = []
    states, best, best_score, seconds, steps1 = [], 0, -math.inf, 0.0, 0
    for t in range(rounds):
        if t > 0:
            load_mean_head(code_network, encoder, d)
        tag = "LiBI" if rounds == 1 else f"LiBI round {t + 1}"
        start = time.perf_counter()
        res1 = _stage1(decoder, code_network, data, likelihood, d, weights, stage1_epochs, batch_size, lr, seed + t,
                       f"{tag} stage 1", progress)
        seconds += time.perf_counter() - start
        steps1 += res1.steps
        res2 = _stage2(decoder, model, guide, loss_fn, len(data), stage2_epochs, batch_size, lr, seed + t, progress,
                       f"{tag} stage 2")
        rec = LiBIRound(list(res1.epoch_losses), list(res2.epoch_losses), None, res2, res1)
        if selection != "none":
            rec.log_likelihood = _selection_log_likelihood(decoder, likelihood, select_x, d, seed)
            score = rec.log_likelihood if math.isfinite(rec.log_likelihood) else -math.inf
            if not history or score > best_score:
                best, best_score = t, score
        history.append(rec)
        if rounds > 1:
            states.append([copy.deepcopy(m.state_dict()) for m in (decoder, encoder, code_network)])
    if rounds > 1:
        for m, state in zip((decoder, encoder, code_network), states[best]):
            m.load_state_dict(state)  # in place: the param store keeps the same tensors
    return LiBIResult(model, guide, loss_fn, decoder, encoder, code_network, likelihood, d, history, best, selection,
                      seconds, steps1)
