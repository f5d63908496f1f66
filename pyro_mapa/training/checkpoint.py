"""Training checkpoints: Pyro param store, optimizer state and RNG states, in a code-free file.

Files are written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts only,
so a checkpoint from elsewhere cannot run code. Parameter constraints are not stored;
the model re-creates them, and :func:`restore_params` copies the saved unconstrained
values into the param store in place (so modules registered with ``pyro.module`` stay
linked to the store).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pyro
import torch

from .._io import atomic_torch_save

__all__ = [
    "check_architecture",
    "describe_run",
    "get_rng_state",
    "load_checkpoint",
    "param_state",
    "restore_params",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "pyro_mapa.checkpoint"
CHECKPOINT_VERSION = 1


def get_rng_state() -> dict[str, Any]:
    """Torch, Python and NumPy RNG states as plain tensors and lists."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _to_lists(obj):
    if isinstance(obj, tuple):
        return [_to_lists(o) for o in obj]
    return obj


def param_state() -> dict[str, torch.Tensor]:
    """Unconstrained values of every parameter in Pyro's param store, detached copies."""
    store = pyro.get_param_store()
    return {name: value.detach().clone() for name, value in store.named_parameters()}


def restore_params(values: dict[str, torch.Tensor]) -> None:
    """Copies saved unconstrained values into the param store, in place.

    Raises:
        ValueError: if a saved parameter is missing from the store or has another shape
            (the model must have been run once, so that its parameters exist).
    """
    current = dict(pyro.get_param_store().named_parameters())  # unconstrained values
    missing = [n for n in values if n not in current]
    if missing:
        raise ValueError(
            f"checkpoint parameters {missing[:5]} are not in the param store; run the model and "
            "guide once (same architecture) before restoring"
        )
    with torch.no_grad():
        for name, value in values.items():
            target = current[name]
            if target.shape != value.shape:
                raise ValueError(
                    f"checkpoint parameter {name!r} has shape {tuple(value.shape)}, the model's has "
                    f"{tuple(target.shape)}: the checkpoint belongs to another architecture"
                )
            target.copy_(value)


def _kind(obj: Any) -> str:
    """A model's, guide's or loss's kind: its class (a function: its qualified name)."""
    if callable(obj) and hasattr(obj, "__qualname__") and not isinstance(obj, type):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"  # a plain function
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_run(model: Any, guide: Any, loss: Any) -> dict[str, str]:
    """What a checkpoint records of the run's architecture: the model's, guide's and loss's classes."""
    return {"model": _kind(model), "guide": _kind(guide), "loss": _kind(loss)}


def check_architecture(
    state: dict[str, Any], current: dict[str, str], used_params: set[str], path: str | os.PathLike = "checkpoint"
) -> None:
    """Refuses to resume ``state`` into a run of other classes or with parameters the checkpoint lacks.

    Arguments:
        state: A loaded checkpoint.
        current: :func:`describe_run` of the run that resumes.
        used_params: Names of the Pyro params the resuming model and guide use.
        path: The checkpoint file, for messages.

    Raises:
        ValueError: another model, guide or loss class (checkpoints that record them), or a
            parameter the model or guide uses that the checkpoint does not hold (it would keep
            its initial value while the rest resumes, and the loss history would mix objectives).
    """
    saved = state.get("architecture")
    if isinstance(saved, dict):
        for role in ("model", "guide", "loss"):
            if role in saved and saved[role] != current[role]:
                raise ValueError(
                    f"{path!s} was written by a run with {role} {saved[role]}, this run's {role} is "
                    f"{current[role]}: the checkpoint belongs to another architecture; resume with the same "
                    "model, guide and loss, or start afresh (resume=False or a new checkpoint file)"
                )
    extra = sorted(used_params - set(state.get("params", {})))
    if extra:
        raise ValueError(
            f"this run's model and guide have parameters {extra[:5]} that {path!s} does not hold: the "
            "checkpoint belongs to another architecture; resume with the same model, guide and loss, "
            "or start afresh (resume=False or a new checkpoint file)"
        )


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Writes ``state`` atomically; a crash mid-write never leaves a partial file under ``path``."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        ValueError: for a truncated, foreign or unsupported file.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"could not read a checkpoint from {path!s}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path!s} is not a pyro_mapa checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path!s} has checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
    return payload
