"""A plain SVI training loop shared by every method: epochs of shuffled minibatches, Adam, pass counts."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, SVI
from pyro.optim import Adam
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import NonFiniteLossError
from ..models.vae import check_guide_data
from .checkpoint import (
    check_architecture,
    describe_run,
    get_rng_state,
    load_checkpoint,
    param_state,
    restore_params,
    save_checkpoint,
    set_rng_state,
)
from .threads import torch_threads

__all__ = ["FitResult", "fit", "network_pass_counts"]


@dataclass
class FitResult:
    """What :func:`fit` measured.

    Attributes:
        epoch_losses: Mean SVI loss per point over each epoch.
        seconds_per_epoch: Wall-clock seconds per epoch (mean).
        encoder_passes_per_point: Encoder rows run per data point per gradient step.
        decoder_passes_per_point: Decoder rows run per data point per gradient step.
        steps: Gradient steps taken.
        epoch_stages: Empty for a run of one objective (every :func:`fit` run); for a run of
            several stages (LiBI through ``MethodSetup.train``), the stage of each entry of
            ``epoch_losses`` (e.g. ``"stage 1"``), whose losses are of different objectives.
    """

    epoch_losses: list[float] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    encoder_passes_per_point: float = 0.0
    decoder_passes_per_point: float = 0.0
    steps: int = 0
    epoch_stages: list[str] = field(default_factory=list)

    def losses_by_stage(self) -> dict[str, list[float]]:
        """``{stage: its epoch losses}`` in order (``{"": epoch_losses}`` for a single-objective run)."""
        if not self.epoch_stages:
            return {"": list(self.epoch_losses)}
        out: dict[str, list[float]] = {}
        for stage, value in zip(self.epoch_stages, self.epoch_losses):
            out.setdefault(stage, []).append(value)
        return out

    @property
    def passes_per_point(self) -> float:
        """Encoder plus decoder passes per data point per gradient step."""
        return self.encoder_passes_per_point + self.decoder_passes_per_point


def _counters(*objs) -> list:
    found = []
    for obj in objs:
        for o in (obj, getattr(obj, "codebook", None)):
            if o is not None and (hasattr(o, "encoder_passes") or hasattr(o, "decoder_passes")):
                if all(o is not f for f in found):
                    found.append(o)
    return found


def network_pass_counts(*objs) -> tuple[int, int]:
    """Total ``(encoder, decoder)`` rows counted by the models, guides or codebooks given."""
    enc = sum(getattr(o, "encoder_passes", 0) for o in _counters(*objs))
    dec = sum(getattr(o, "decoder_passes", 0) for o in _counters(*objs))
    return enc, dec


def _reset(*objs) -> None:
    for o in _counters(*objs):
        if hasattr(o, "encoder_passes"):
            o.encoder_passes = 0
        if hasattr(o, "decoder_passes"):
            o.decoder_passes = 0


def _data_rows(obj) -> int | None:
    """``N`` of a model or guide that holds its data (``.data``) or a MAPA table (``.table``)."""
    try:
        data = getattr(obj, "data", None)
    except Exception:  # a property that cannot be computed: no data to compare
        data = None
    if isinstance(data, Tensor) and data.dim() >= 1:
        return int(data.shape[0])
    rows = getattr(getattr(obj, "table", None), "total_rows", None)
    return rows if isinstance(rows, int) else None


def _check_num_points(num_points: int | None, model, guide) -> int:
    """``num_points`` checked against the model's (else the guide's) data rows, or derived from them."""
    owner, rows = "model", _data_rows(model)
    if rows is None:
        owner, rows = "guide", _data_rows(guide)
    if num_points is None:
        if rows is None:
            raise ValueError(
                "num_points is required when neither the model nor the guide holds the data "
                "(a .data tensor): pass num_points=N, the number of data rows"
            )
        return rows
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be a positive int, got {num_points!r}")
    if rows is not None and num_points != rows:
        raise ValueError(
            f"num_points={num_points} but the {owner}'s data has {rows} rows: fit would draw minibatches "
            f"from rows 0-{num_points - 1} only while the model scales each batch as if N = {rows}; pass "
            f"num_points={rows} (or leave it out: it is read off the model)"
        )
    return num_points


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(
            f"lr must be a positive finite number (Adam's learning rate, e.g. 1e-3), got {lr!r}; "
            "lr=0 would run every step with frozen parameters"
        )
    return float(lr)


def _used_params(model, guide, loss: ELBO, batch: Tensor) -> set[str]:
    """Names of the Pyro params one loss evaluation touches (creating them if new)."""
    with poutine.trace(param_only=True) as capture:
        loss.loss(model, guide, batch)
    return {site["name"] for site in capture.trace.nodes.values()}


def fit(
    model: Callable,
    guide: Callable,
    loss: ELBO,
    num_points: int | None = None,
    *,
    epochs: int = 200,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int | None = 0,
    progress: bool = True,
    desc: str = "train",
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    num_threads: int | None = None,
) -> FitResult:
    """Trains ``model``/``guide`` with ``SVI(loss)`` and Adam on shuffled minibatches of ``range(num_points)``.

    The model and guide are called with one argument, ``batch_idx``. The param store
    is *not* cleared here (call ``pyro.clear_param_store()`` before a fresh restart).
    Before the first step the guide's data is compared with the model's (once per call;
    see :func:`~pyro_mapa.models.vae.check_guide_data`).

    Arguments:
        num_points: ``N``, the number of data rows; read off the model (``model.data``, else
            ``guide.data`` or a MAPA guide's table) when left out, and refused when it differs.
        lr: Adam's learning rate, a positive finite number.
        seed: Seeds Pyro's global RNGs (torch, Python, NumPy) before training; ``None`` leaves
            them as they are (the run then depends on what ran before).
        progress: Show a tqdm bar named ``desc`` that stays on screen at the end.
        callback: Called as ``callback(epoch, epoch_loss)`` after every epoch; return
            ``True`` to stop early (e.g. on a validation criterion).
        checkpoint: A file to save the run to every ``checkpoint_every`` epochs (param
            store, optimizer state, RNG states, epoch, losses, the model/guide/loss classes; see
            :mod:`pyro_mapa.training.checkpoint`).
        resume: Continue from ``checkpoint`` if it exists: the resumed run takes exactly
            the steps an uninterrupted run would (same minibatches, same draws). A checkpoint
            of another model, guide or loss class, or with other parameters, is refused.
        num_threads: Torch intra-op threads during training, restored afterwards (see
            :mod:`pyro_mapa.training.threads`): default ``None`` is 1 thread unless
            ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set (then PyTorch's setting is kept).

    Raises:
        NonFiniteLossError: if a step's loss is NaN or infinite, or the parameters became
            NaN (a too large ``lr``), naming the epoch and step.
    """
    num_points = _check_num_points(num_points, model, guide)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    lr = _check_lr(lr)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, or None to leave the RNGs as they are; got {seed!r}")
    check_guide_data(model, guide)
    with torch_threads(num_threads):
        return _fit(model, guide, loss, num_points, epochs, batch_size, lr, seed, progress, desc, callback,
                    checkpoint, checkpoint_every, resume)


def _fit(model, guide, loss, num_points, epochs, batch_size, lr, seed, progress, desc, callback, checkpoint,
         checkpoint_every, resume) -> FitResult:
    if seed is not None:
        pyro.set_rng_seed(seed)
    optim = Adam({"lr": lr})
    svi = SVI(model, guide, optim, loss=loss)
    result = FitResult()
    points, start_epoch, elapsed_before = 0, 0, 0.0
    architecture = describe_run(model, guide, loss)
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint)
        # Create the parameters (one evaluation, no update), then overwrite them in place.
        used = _used_params(model, guide, loss, torch.arange(min(batch_size, num_points)))
        check_architecture(state, architecture, used, checkpoint)
        restore_params(state["params"])
        optim.set_state(state["optimizer"])
        set_rng_state(state["rng"])
        saved = state["result"]
        defaults = asdict(result)
        result = FitResult(**{k: saved.get(k, defaults[k]) for k in defaults})
        points, start_epoch, elapsed_before = state["points"], state["epoch"], state["elapsed"]
        if hasattr(loss, "step_count"):
            loss.step_count = state["loss_step_count"]  # keeps counter-based remainder draws in step
        _set_counts(state["pass_counts"], model, guide)
    else:
        _reset(model, guide)
    start = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, leave=True)
    for epoch in bar:
        total = 0.0
        batches = torch.randperm(num_points).split(batch_size)
        for step, batch in enumerate(batches):
            where = f"epoch {epoch}, step {step} (gradient step {result.steps})"
            try:
                value = svi.step(batch)  # an estimate of the full-data loss
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{where}: {e}") from e
            except ValueError as e:
                if "found invalid values" not in str(e):  # torch's distribution validation of NaN parameters
                    raise
                cause = (
                    "the model's or guide's initial parameters, or the data, give NaN distribution parameters "
                    "before any update: check the networks' initial values"
                    if result.steps == 0 and start_epoch == 0 else
                    f"the network parameters diverged: lr={lr:g} is probably too large, try a smaller one "
                    f"(e.g. lr={lr / 10:g})"
                )
                raise NonFiniteLossError(
                    f"{where}: {cause}; a distribution got NaN parameters ({str(e).splitlines()[0]})"
                ) from e
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"{where}: the loss is {value}; if the parameters diverged, lr={lr:g} is probably too large, "
                    f"try a smaller one (e.g. lr={lr / 10:g}); else the data or the model give non-finite "
                    "log-densities"
                )
            total += value
            points += len(batch)
            result.steps += 1
        result.epoch_losses.append(total / len(batches) / num_points)
        bar.set_postfix(loss=f"{result.epoch_losses[-1]:.3f}")
        stop = callback is not None and callback(epoch, result.epoch_losses[-1])
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or stop):
            save_checkpoint(checkpoint, {
                "epoch": epoch + 1,
                "params": param_state(),
                "optimizer": optim.get_state(),
                "rng": get_rng_state(),
                "result": asdict(result),
                "points": points,
                "elapsed": elapsed_before + time.perf_counter() - start,
                "pass_counts": list(network_pass_counts(model, guide)),
                "loss_step_count": getattr(loss, "step_count", 0),
                "architecture": architecture,
            })
        if stop:
            break
    bar.close()
    elapsed = elapsed_before + time.perf_counter() - start
    result.seconds_per_epoch = elapsed / max(len(result.epoch_losses), 1)
    enc, dec = network_pass_counts(model, guide)
    result.encoder_passes_per_point = enc / max(points, 1)
    result.decoder_passes_per_point = dec / max(points, 1)
    return result

def _set_counts(counts, *objs) -> None:
    """Restores total pass counts (assigned to the first counter object of each kind)."""
    _reset(*objs)
    enc, dec = counts
    for o in _counters(*objs):
        if hasattr(o, "encoder_passes"):
            o.encoder_passes, enc = enc, 0
        if hasattr(o, "decoder_passes"):
            o.decoder_passes, dec = dec, 0
