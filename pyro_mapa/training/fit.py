"""A plain SVI training loop shared by every method: epochs of shuffled minibatches, Adam, pass counts."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyro
import torch
from pyro.infer import ELBO, SVI
from pyro.optim import Adam
from tqdm.auto import tqdm

from ..errors import NonFiniteLossError
from .checkpoint import (
    get_rng_state,
    load_checkpoint,
    param_state,
    restore_params,
    save_checkpoint,
    set_rng_state,
)

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
    """

    epoch_losses: list[float] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    encoder_passes_per_point: float = 0.0
    decoder_passes_per_point: float = 0.0
    steps: int = 0

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


def fit(
    model: Callable,
    guide: Callable,
    loss: ELBO,
    num_points: int,
    *,
    epochs: int = 200,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
) -> FitResult:
    """Trains ``model``/``guide`` with ``SVI(loss)`` and Adam on shuffled minibatches of ``range(num_points)``.

    The model and guide are called with one argument, ``batch_idx``. The param store
    is *not* cleared here (call ``pyro.clear_param_store()`` before a fresh restart).

    Arguments:
        callback: Called as ``callback(epoch, epoch_loss)`` after every epoch; return
            ``True`` to stop early (e.g. on a validation criterion).
        checkpoint: A file to save the run to every ``checkpoint_every`` epochs (param
            store, optimizer state, RNG states, epoch, losses; see
            :mod:`pyro_mapa.training.checkpoint`).
        resume: Continue from ``checkpoint`` if it exists: the resumed run takes exactly
            the steps an uninterrupted run would (same minibatches, same draws).

    Raises:
        NonFiniteLossError: if a step's loss is NaN or infinite, naming the epoch and step.
    """
    for name, value in (("num_points", num_points), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    pyro.set_rng_seed(seed)
    optim = Adam({"lr": lr})
    svi = SVI(model, guide, optim, loss=loss)
    result = FitResult()
    points, start_epoch, elapsed_before = 0, 0, 0.0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint)
        # Create the parameters (one evaluation, no update), then overwrite them in place.
        loss.loss(model, guide, torch.arange(min(batch_size, num_points)))
        restore_params(state["params"])
        optim.set_state(state["optimizer"])
        set_rng_state(state["rng"])
        saved = state["result"]
        result = FitResult(**{k: saved[k] for k in asdict(result)})
        points, start_epoch, elapsed_before = state["points"], state["epoch"], state["elapsed"]
        if hasattr(loss, "step_count"):
            loss.step_count = state["loss_step_count"]  # keeps counter-based remainder draws in step
        _set_counts(state["pass_counts"], model, guide)
    else:
        _reset(model, guide)
    start = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        total = 0.0
        batches = torch.randperm(num_points).split(batch_size)
        for step, batch in enumerate(batches):
            try:
                total += svi.step(batch)  # an estimate of the full-data loss
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"epoch {epoch}, step {step} (gradient step {result.steps}): {e}") from e
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
            })
        if stop:
            break
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
