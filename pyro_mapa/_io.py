"""Atomic, code-free file writes shared by tables and checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A crash mid-write never leaves a partial file under ``path``; concurrent writers of
    the same path each rename a complete file, so a reader sees one whole file or none.

    Raises:
        ValueError: ``path`` is an existing directory.
        OSError: the file could not be written (its message names ``path``, never the
            temporary file; the subclass follows the cause, e.g. ``PermissionError``).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot save to {path}: it is a directory; pass a file path such as {path / 'table.pt'}")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        reason = e.strerror or str(e)
        if not path.parent.is_dir():
            reason = f"its folder {path.parent} is not a directory and could not be made ({reason})"
        raise OSError(e.errno, f"could not save to {path}: {reason}; check that its folder exists and is writable",
                      str(path)) from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)
