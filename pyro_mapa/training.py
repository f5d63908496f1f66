"""A plain SVI training loop shared by every method: epochs of shuffled minibatches, Adam, pass counts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pyro
import torch
from pyro.infer import SVI
from pyro.infer.elbo import ELBO
from pyro.optim import Adam
from tqdm.auto import tqdm

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
) -> FitResult:
    """Trains ``model``/``guide`` with ``SVI(loss)`` and Adam on shuffled minibatches of ``range(num_points)``.

    The model and guide are called with one argument, ``batch_idx``. The param store
    is *not* cleared here (call ``pyro.clear_param_store()`` before a fresh restart).

    Arguments:
        callback: Called as ``callback(epoch, epoch_loss)`` after every epoch; return
            ``True`` to stop early (e.g. on a validation criterion).
    """
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, Adam({"lr": lr}), loss=loss)
    result = FitResult()
    _reset(model, guide)
    points = 0
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        total = 0.0
        batches = torch.randperm(num_points).split(batch_size)
        for batch in batches:
            total += svi.step(batch)  # an estimate of the full-data loss
            points += len(batch)
            result.steps += 1
        result.epoch_losses.append(total / len(batches) / num_points)
        bar.set_postfix(loss=f"{result.epoch_losses[-1]:.3f}")
        if callback is not None and callback(epoch, result.epoch_losses[-1]):
            break
    elapsed = time.perf_counter() - start
    result.seconds_per_epoch = elapsed / max(len(result.epoch_losses), 1)
    enc, dec = network_pass_counts(model, guide)
    result.encoder_passes_per_point = enc / max(points, 1)
    result.decoder_passes_per_point = dec / max(points, 1)
    return result
