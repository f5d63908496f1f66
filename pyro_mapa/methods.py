"""The compared methods as (model, guide, loss) triples over one decoder architecture (§6, docs/method.md §7).

=============  ===============================  ======================================
method         guide                            loss
=============  ===============================  ======================================
``VAE``        mean-field Gaussian              ``Trace_ELBO``
``IWAE``       mean-field Gaussian              ``TraceIWAE_ELBO(S)``
``MAPA``       MAPA table (kernel on the data)  ``TraceMAPA_ELBO(K, S)``
``MAPA-GT``    true index posterior (Eq. 7)     ``TraceMAPA_ELBO(K, S)``
``MAPA-naive`` uniform table                    ``TraceMAPA_ELBO(K, S)``
``MAPA-free``  MAPA table, free codes (no        ``TraceMAPA_ELBO(K, S)``
               encoder: ``FreeCodebook``)
``RenyiELBO``  mean-field Gaussian              Pyro's ``RenyiELBO(alpha=0, num_particles=S)``
``InfoVAE``    mean-field Gaussian              ``TraceInfoVAE_ELBO(alpha, lambda_)``
``HVAE``       ``HamiltonianGuide`` (K steps)   ``Trace_ELBO``
``LIDVAE``     mean-field Gaussian              ``Trace_ELBO``, injective ``LIDVAEDecoder``
``MAPA-LIDVAE`` MAPA table                      ``TraceMAPA_ELBO(K, S)``, ``LIDVAEDecoder``
``LiBI``       mean-field Gaussian              R rounds: stage 1 decoder + point codes (HZ and moment
                                                penalties), stage 2 ``Trace_ELBO`` over the encoder only
``ExactDecoder`` mean-field Gaussian            stage 1 exact likelihood, stage 2 ``Trace_ELBO``
``beta-VAE``   mean-field Gaussian              ``TraceBetaELBO(β)`` (site ``z`` scaled by β)
``annealed-beta-VAE`` mean-field Gaussian       ``TraceBetaELBO``, β from 0 to its value linearly over the
                                                first half of the epochs (:func:`annealed_beta`)
``Lagging``    mean-field Gaussian              ``Trace_ELBO``; segments of encoder-only, then joint epochs
=============  ===============================  ======================================

After training, :class:`LearnedModel` is the original model (Eq. 1) each method
defines: the decoder with a standard-normal prior (VAE-type methods) or the decoder with
the prior recovered from the codes by a Gaussian copula (MAPA variants, §6).

``MAPA-free`` learns one free code per training point (:class:`~pyro_mapa.FreeCodebook`,
started at the data's PCA projection) instead of an encoder ``g_φ``; everything else
(table, bound, prior recovery, evaluation) is MAPA's. Its ``encoder`` slot holds the
codebook, whose only parameters are the codes.

Per-method settings (InfoVAE's α and λ, HVAE's K, step size and tempering) are passed
as ``options``; :data:`OPTION_GRIDS` lists the small grids `pyro-mapa reproduce` chooses
from on validation log-likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from torch import Tensor, nn

from .evaluation.index_loglik import index_log_likelihood
from .errors import check_positive_int
from .infer import HamiltonianGuide, MAPAGuide, TraceInfoVAE_ELBO, TraceIWAE_ELBO, TraceMAPA_ELBO
from .infer.beta_elbo import TraceBetaELBO
from .infer import hamiltonian_guide as hvae_defaults
from .infer import infovae_elbo as infovae_defaults
from .models import (
    AmortizedCodebook,
    EmpiricalizedModel,
    FreeCodebook,
    LIDVAEDecoder,
    Likelihood,
    MeanFieldGuide,
    VAEModel,
    mlp,
)
from .priors import CodeMixturePrior, FlowPrior, GaussianCopulaPrior
from .table.posterior_table import PosteriorTable
from .training.fit import FitResult, fit
from .training.exact_decoder import fit_exact_decoder
from .training.libi import fit_libi, load_mean_head
from .priors.learned_model import LearnedModel

__all__ = ["METHODS", "OPTION_GRIDS", "LearnedModel", "MethodSetup", "TraceBetaELBO", "annealed_beta", "build_method",
           "true_posterior_table"]

METHODS = ("VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive", "MAPA-free", "RenyiELBO", "InfoVAE", "HVAE",
           "LIDVAE", "MAPA-LIDVAE", "LiBI", "ExactDecoder", "beta-VAE", "annealed-beta-VAE", "Lagging")
MAPA_METHODS = ("MAPA", "MAPA-GT", "MAPA-naive", "MAPA-free", "MAPA-LIDVAE")
SMOOTHED_METHODS = ("MAPA",)  # options={"tau": τ}: codes smoothed by N(0, (τ s)^2), see AmortizedCodebook

# Small grids chosen on validation log-likelihood by `pyro-mapa reproduce` (one setting per data set and
# draw, together with the restart). (alpha, lambda) = (0, 1) is the plain VAE, left out on purpose.
OPTION_GRIDS: dict[str, list[dict]] = {
    "InfoVAE": [{"alpha": 1.0, "lambda_": 1.0}, {"alpha": 0.0, "lambda_": 10.0}, {"alpha": 1.0, "lambda_": 10.0}],
    "HVAE": [{"num_leapfrog": 1, "tempering": "learned"}, {"num_leapfrog": 5, "tempering": "learned"}],
    "beta-VAE": [{"beta": 0.5}, {"beta": 2.0}, {"beta": 5.0}],  # LiBI paper's grids
    "annealed-beta-VAE": [{"beta": 0.5}, {"beta": 1.0}, {"beta": 2.0}, {"beta": 5.0}],
}
# InfoVAE's and HVAE's defaults are their classes' (one source: TraceInfoVAE_ELBO() and HamiltonianGuide(...)
# without options build exactly the registry's method).
DEFAULT_OPTIONS: dict[str, dict] = {
    "InfoVAE": {"alpha": infovae_defaults.DEFAULT_ALPHA, "lambda_": infovae_defaults.DEFAULT_LAMBDA,
                "kernel": infovae_defaults.DEFAULT_KERNEL, "bandwidth": infovae_defaults.DEFAULT_BANDWIDTH},
    "HVAE": {"num_leapfrog": hvae_defaults.DEFAULT_NUM_LEAPFROG, "tempering": hvae_defaults.DEFAULT_TEMPERING,
             "beta0": hvae_defaults.DEFAULT_BETA0, "step_size": hvae_defaults.DEFAULT_STEP_SIZE},
    "LIDVAE": {"hidden": (32, 32), "strength": 0.1},
    "LiBI": {"rounds": 1, "hz_weight": 1.0, "cov_scale": 0.5, "mean_scale": 0.5, "stage1_fraction": 0.75},
    "ExactDecoder": {"stage1_fraction": 0.75, "num_points": None},
    "beta-VAE": {"beta": 2.0},
    "annealed-beta-VAE": {"beta": 1.0, "warmup_fraction": 0.5},
    "Lagging": {"segments": 5, "encoder_fraction": 0.5},
}


def annealed_beta(epoch: int, epochs: int, beta: float = 1.0, warmup_fraction: float = 0.5) -> float:
    """The annealed β-VAE's β in ``epoch`` (from 0): ``beta · min(1, epoch / W)``, ``W = max(1, round(fraction · epochs))``.

    Linear warm-up from 0 over the first ``warmup_fraction`` of the epochs, then ``beta``.
    """
    return beta * min(1.0, epoch / max(1, round(warmup_fraction * epochs)))


def true_posterior_table(
    data: Tensor, true_latents: Tensor, true_decoder: Callable[[Tensor], Tensor], likelihood: Likelihood
) -> PosteriorTable:
    """"MAPA-GT": :math:`q(c_n = i) \\propto p(x_n \\mid f_{true}(z_i))` with the true codes (Eq. 7)."""
    with torch.no_grad():
        means = true_decoder(true_latents)  # (N, D)
        log_p = index_log_likelihood(data, means, likelihood)  # (n, i)
    return PosteriorTable.from_log_probs(log_p)


@dataclass
class MethodSetup:
    """A method ready for :func:`~pyro_mapa.training.fit`: its model, guide, loss and networks."""

    name: str
    model: nn.Module
    guide: Callable
    loss: ELBO
    decoder: nn.Module
    encoder: nn.Module
    likelihood: Likelihood
    latent_dim: int = 1
    trainer: Callable[..., FitResult] | None = None
    options: dict | None = None
    valid_data: Tensor | None = None  # LiBI chooses its best round on it (set it before train())

    def train(self, num_points: int | None = None, *, epochs: int = 200, batch_size: int = 100, lr: float = 1e-3,
              seed: int | None = 0, progress: bool = True, num_threads: int | None = None) -> FitResult:
        """Trains the method: :func:`~pyro_mapa.training.fit` on (model, guide, loss), or its own trainer (LiBI).

        The defaults are :func:`~pyro_mapa.training.fit`'s; ``num_points`` is read off the
        model when left out. ``progress`` shows a bar named after the method, left on screen;
        ``num_threads`` is the thread policy of :mod:`pyro_mapa.training.threads` (one thread
        unless ``OMP_NUM_THREADS`` is set). LiBI's result marks each epoch's stage
        (``FitResult.epoch_stages``): its two stages' losses are of different objectives.
        """
        if self.trainer is not None:
            if num_points is not None and num_points != len(self.model.data):
                raise ValueError(
                    f"num_points={num_points} but the model's data has {len(self.model.data)} rows; pass "
                    f"num_points={len(self.model.data)} (or leave it out)"
                )
            return self.trainer(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                                num_threads=num_threads)
        return fit(self.model, self.guide, self.loss, num_points, epochs=epochs, batch_size=batch_size, lr=lr,
                   seed=seed, progress=progress, desc=self.name, num_threads=num_threads)

    def learned_model(self, flow_steps: int = 2000, seed: int = 0) -> LearnedModel:
        """The original generative model this method defines, after training.

        VAE and IWAE: the decoder with its N(0, I) prior. MAPA variants: the decoder with
        the prior recovered from the codes, a Gaussian copula for ``d = 1`` and a
        normalizing flow (:class:`~pyro_mapa.priors.FlowPrior`, ``flow_steps`` Adam steps)
        for ``d > 1`` (§6).
        """
        prior = None
        if isinstance(self.model, EmpiricalizedModel):
            with torch.no_grad():
                codes = self.model.codebook.codes()
            if getattr(self.model.codebook, "tau", 0.0) > 0:  # the smoothed model's own prior: nothing to fit
                prior = CodeMixturePrior(codes, self.model.codebook.smoothing_scale())
            elif codes.shape[-1] == 1:
                prior = GaussianCopulaPrior(codes)
            else:
                prior = FlowPrior.fit(codes, steps=flow_steps, seed=seed)
        return LearnedModel(self.decoder, self.likelihood, prior, latent_dim=self.latent_dim)


def _exact_decoder_trainer(setup_box: list, decoder, encoder, data, likelihood, latent_dim, hidden, fraction,
                           num_points=None):
    def train(*, epochs: int, batch_size: int, lr: float, seed: int | None, progress: bool,
              num_threads: int | None) -> FitResult:
        check_positive_int(epochs, "epochs")
        stage1 = max(1, round(fraction * epochs))
        res = fit_exact_decoder(decoder, data, likelihood, latent_dim, encoder=encoder, stage1_epochs=stage1,
                       stage2_epochs=max(1, epochs - stage1), batch_size=batch_size, lr=lr, hidden=tuple(hidden),
                       num_points=num_points,
                       seed=seed, progress=progress, num_threads=num_threads)
        setup = setup_box[0]
        setup.model, setup.guide, setup.loss = res.model, res.guide, res.stage2_loss
        s2 = res.stage2
        steps1 = stage1 * math.ceil(len(data) / batch_size)
        total = steps1 + s2.steps
        return FitResult(
            epoch_losses=res.stage1_losses + res.stage2_losses,  # two objectives: see epoch_stages
            epoch_stages=["stage 1"] * len(res.stage1_losses) + ["stage 2"] * len(res.stage2_losses),
            seconds_per_epoch=(res.stage1_seconds + s2.seconds_per_epoch * len(s2.epoch_losses)) / epochs,
            encoder_passes_per_point=s2.encoder_passes_per_point * s2.steps / total,
            decoder_passes_per_point=(res.stage1_decoder_passes_per_point * steps1
                                      + s2.decoder_passes_per_point * s2.steps) / total,
            steps=total,
        )

    return train


def _libi_trainer(setup_box: list, decoder, encoder, data, likelihood, latent_dim, hidden, opts, code_network=None):
    """LiBI's trainer: ``epochs`` split into ``rounds`` rounds of ``max(2, epochs // rounds)`` epochs, each
    ``round(stage1_fraction · that)`` epochs of stage 1 (at least 1, at most all but 1), the rest stage 2.
    With several rounds the round is chosen on ``MethodSetup.valid_data`` when set, else on the training data."""

    def train(*, epochs: int, batch_size: int, lr: float, seed: int | None, progress: bool,
              num_threads: int | None) -> FitResult:
        check_positive_int(epochs, "epochs")
        rounds = check_positive_int(opts["rounds"], "options rounds")
        per_round = max(2, epochs // rounds)
        stage1 = min(per_round - 1, max(1, round(opts["stage1_fraction"] * per_round)))
        if code_network is not None:
            load_mean_head(code_network, encoder, latent_dim)
        res = fit_libi(decoder, data, likelihood, latent_dim, encoder=encoder, code_network=code_network,
                       rounds=rounds, valid_data=setup_box[0].valid_data,
                       hz_weight=opts["hz_weight"], cov_scale=opts["cov_scale"], mean_scale=opts["mean_scale"],
                       stage1_epochs=stage1, stage2_epochs=per_round - stage1, batch_size=batch_size, lr=lr,
                       hidden=tuple(hidden), seed=0 if seed is None else seed, progress=progress,
                       num_threads=num_threads)
        setup = setup_box[0]
        setup.model, setup.guide, setup.loss = res.model, res.guide, res.stage2_loss
        s2 = [r.stage2 for r in res.rounds]
        steps2 = sum(f.steps for f in s2)
        total = res.stage1_steps + steps2
        return FitResult(
            epoch_losses=res.epoch_losses,  # two objectives per round: see epoch_stages
            epoch_stages=res.epoch_stages,
            seconds_per_epoch=(res.stage1_seconds + sum(f.seconds_per_epoch * len(f.epoch_losses) for f in s2))
            / len(res.epoch_losses),
            # stage 1: one code-network and one decoder row per point per step
            encoder_passes_per_point=(res.stage1_steps + sum(f.encoder_passes_per_point * f.steps for f in s2)) / total,
            decoder_passes_per_point=(res.stage1_steps + sum(f.decoder_passes_per_point * f.steps for f in s2)) / total,
            steps=total,
        )

    return train


def _annealed_trainer(setup: MethodSetup, opts: dict):
    def train(*, epochs: int, batch_size: int, lr: float, seed: int | None, progress: bool,
              num_threads: int | None) -> FitResult:
        loss, final = setup.loss, opts["beta"]
        loss.beta = annealed_beta(0, epochs, final, opts["warmup_fraction"])

        def step_beta(epoch: int, _value: float) -> None:  # after epoch e: β of epoch e + 1
            loss.beta = annealed_beta(epoch + 1, epochs, final, opts["warmup_fraction"])

        try:
            return fit(setup.model, setup.guide, loss, len(setup.model.data), epochs=epochs, batch_size=batch_size,
                       lr=lr, seed=seed, progress=progress, desc=setup.name, callback=step_beta,
                       num_threads=num_threads)
        finally:
            loss.beta = final

    return train


def _lagging_trainer(setup: MethodSetup, opts: dict):
    """He et al. (2019) as the LiBI paper ran it: ``S = max(1, min(segments, epochs // 2))`` equal segments, each
    ``round(encoder_fraction · length)`` epochs (at least 1) of encoder-only ELBO steps (decoder frozen), then
    the rest joint; a fresh Adam per phase (one :func:`fit` call), phase ``k`` seeded ``seed + k``."""

    def train(*, epochs: int, batch_size: int, lr: float, seed: int | None, progress: bool,
              num_threads: int | None) -> FitResult:
        check_positive_int(epochs, "epochs")
        segments = max(1, min(check_positive_int(opts["segments"], "options segments"), epochs // 2))
        bounds = [round(k * epochs / segments) for k in range(segments + 1)]
        out, phase, dec = FitResult(), 0, setup.decoder
        for k in range(segments):
            length = bounds[k + 1] - bounds[k]
            enc_epochs = min(length, max(1, round(opts["encoder_fraction"] * length)))
            for frozen, n_ep in ((True, enc_epochs), (False, length - enc_epochs)):
                if n_ep == 0:
                    continue
                flags, was_training = [p.requires_grad for p in dec.parameters()], dec.training
                if frozen:
                    dec.requires_grad_(False).eval()  # no gradients: Pyro's Adam leaves θ as it is
                try:
                    res = fit(setup.model, setup.guide, setup.loss, len(setup.model.data), epochs=n_ep,
                              batch_size=batch_size, lr=lr, seed=None if seed is None else seed + phase,
                              progress=progress, desc=f"{setup.name} {k + 1}", num_threads=num_threads)
                finally:
                    for p, flag in zip(dec.parameters(), flags):
                        p.requires_grad_(flag)
                    dec.train(was_training)
                phase += 1
                total = out.steps + res.steps
                for attr in ("encoder_passes_per_point", "decoder_passes_per_point"):
                    setattr(out, attr, (getattr(out, attr) * out.steps + getattr(res, attr) * res.steps) / total)
                out.seconds_per_epoch += res.seconds_per_epoch * n_ep / epochs
                out.steps = total
                out.epoch_losses += res.epoch_losses
                out.epoch_stages += [f"segment {k + 1} {'encoder' if frozen else 'joint'}"] * n_ep
        return out

    return train


def build_method(
    name: str,
    data: Tensor,
    likelihood: Likelihood,
    *,
    latent_dim: int = 1,
    hidden: Sequence[int] = (50, 50),
    num_top: int = 5,
    num_samples: int = 5,
    num_particles: int = 10,
    table: PosteriorTable | None = None,
    seed: int = 0,
    options: dict | None = None,
    networks: Callable[[str, int, int], nn.Module] | None = None,
) -> MethodSetup:
    """Builds one method's model, guide and loss on ``data``.

    Arguments:
        name: One of :data:`METHODS`.
        data: ``(N, D)`` training data.
        likelihood: The observation model (its kernel builds the MAPA table).
        latent_dim: ``d``.
        hidden: Hidden layer sizes of encoder and decoder.
        num_top, num_samples: ``K`` and ``S`` of the MAPA bound.
        num_particles: ``S`` of the IWAE.
        table: The table for the MAPA variants (required for ``MAPA-GT``; built from
            the data with the likelihood's kernel for ``MAPA``, ``MAPA-free`` and ``MAPA-LIDVAE``;
            uniform for ``MAPA-naive``).
        seed: Seeds the network initialization.
        options: Per-method settings over :data:`DEFAULT_OPTIONS` (MAPA: ``tau``, smoothed codes;
            InfoVAE: ``alpha``, ``lambda_``,
            ``kernel``, ``bandwidth``; HVAE: ``num_leapfrog``, ``tempering``, ``beta0``, ``step_size``;
            LIDVAE: ``hidden``, ``strength``; LiBI: ``rounds``, ``hz_weight``, ``cov_scale``, ``mean_scale``,
            ``stage1_fraction``; ExactDecoder: ``stage1_fraction``, ``num_points`` (grid nodes per axis); beta-VAE: ``beta``; annealed-beta-VAE:
            ``beta``, ``warmup_fraction``; Lagging: ``segments``, ``encoder_fraction``).
        networks: ``networks(role, in_features, out_features)`` builds the ``"decoder"`` (``d -> D``) and
            the ``"encoder"`` (``D -> 2d`` for a Gaussian guide, ``D -> d`` for a codebook or LiBI's code
            network) instead of ``mlp(in, out, hidden)``: e.g. a decoder of the true process's form. Not
            used by the LIDVAE variants (their decoder is the injective one) or by ``MAPA-free``'s codes.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    opts = {**DEFAULT_OPTIONS.get(name, {}), **(options or {})}
    if opts.get("tau", 0.0) and name not in SMOOTHED_METHODS:
        raise ValueError(
            f"options tau (smoothed codes) is defined for {', '.join(SMOOTHED_METHODS)} only: {name} has "
            + ("no codes of its own (its table is given, not learned from an encoder)" if name in MAPA_METHODS
               else "no empiricalized codes")
        )
    latent_dim = check_positive_int(latent_dim, "latent_dim")  # MAPA's codebook would train d = 0 codes
    if networks is not None and not callable(networks):
        raise TypeError(f"networks must be a callable (role, in_features, out_features) -> nn.Module, got {networks!r}")

    def make(role: str, n_in: int, n_out: int) -> nn.Module:
        net = mlp(n_in, n_out, hidden) if networks is None else networks(role, n_in, n_out)
        if not isinstance(net, nn.Module):
            raise TypeError(f"networks({role!r}, {n_in}, {n_out}) must return an nn.Module, got {type(net).__name__}")
        return net

    torch.manual_seed(seed)
    n, d_obs = data.shape
    if name in ("LIDVAE", "MAPA-LIDVAE"):
        decoder: nn.Module = LIDVAEDecoder(latent_dim, d_obs, hidden=tuple(opts.get("hidden", (32, 32))),
                                           strength=opts.get("strength", 0.1))
    else:
        decoder = make("decoder", latent_dim, d_obs)
    if name not in MAPA_METHODS:
        encoder = make("encoder", d_obs, 2 * latent_dim)
        model = VAEModel(decoder, data, latent_dim, likelihood)
        guide: Callable = MeanFieldGuide(encoder, data, latent_dim)
        loss: ELBO = Trace_ELBO(max_plate_nesting=1)
        if name == "IWAE":
            loss = TraceIWAE_ELBO(num_particles, max_plate_nesting=1)
        elif name == "RenyiELBO":
            loss = RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        elif name in ("beta-VAE", "annealed-beta-VAE"):
            loss = TraceBetaELBO(opts["beta"], max_plate_nesting=1)
        elif name == "InfoVAE":
            loss = TraceInfoVAE_ELBO(opts["alpha"], opts["lambda_"], kernel=opts["kernel"],
                                     bandwidth=opts["bandwidth"], max_plate_nesting=1)
        elif name == "HVAE":
            beta0 = 1.0 if opts["tempering"] == "none" else opts["beta0"]
            guide = HamiltonianGuide(encoder, model, latent_dim=latent_dim, data=data,
                                     num_leapfrog=opts["num_leapfrog"], step_size=opts["step_size"],
                                     beta0=beta0, tempering=opts["tempering"])
        setup = MethodSetup(name, model, guide, loss, decoder, encoder, likelihood, latent_dim, options=opts)
        if name == "LiBI":
            code_network = None if networks is None else make("encoder", d_obs, latent_dim)
            setup.trainer = _libi_trainer([setup], decoder, encoder, data, likelihood, latent_dim, hidden, opts,
                                          code_network)
        elif name == "annealed-beta-VAE":
            setup.trainer = _annealed_trainer(setup, opts)
        elif name == "Lagging":
            setup.trainer = _lagging_trainer(setup, opts)
        elif name == "ExactDecoder":
            setup.trainer = _exact_decoder_trainer([setup], decoder, encoder, data, likelihood, latent_dim, hidden,
                                          opts["stage1_fraction"], opts["num_points"])
        return setup
    if table is None:
        if name == "MAPA-GT":
            raise ValueError("MAPA-GT needs table=true_posterior_table(...) built from the true decoder")
        table = (
            PosteriorTable.uniform(n) if name == "MAPA-naive" else PosteriorTable.from_data(data, likelihood.kernel())
        )
    if name == "MAPA-free":
        codebook: nn.Module = FreeCodebook(n, latent_dim, decoder, data, init="pca")
        encoder = codebook  # the codes are its only parameters
    else:
        encoder = make("encoder", d_obs, latent_dim)
        codebook = AmortizedCodebook(encoder, decoder, data, tau=opts.get("tau", 0.0))
    model = EmpiricalizedModel(codebook, likelihood)
    guide = MAPAGuide(table, site="c", plate="data", data=data)  # catches a table of other data
    loss = TraceMAPA_ELBO(num_top, num_samples, max_plate_nesting=1)
    return MethodSetup(name, model, guide, loss, decoder, encoder, likelihood, latent_dim, options=opts)
