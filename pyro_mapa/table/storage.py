"""The table's file format and on-disk cache.

Files are ``{"meta": json, tensors...}`` written with ``torch.save`` to a temporary file
in the same directory, fsynced and renamed (:func:`~pyro_mapa._io.atomic_torch_save`), so
a crash never leaves a half file under the final name. :func:`load_table` uses
``torch.load(weights_only=True)`` (no code is unpickled), checks the format name and
version and a SHA-256 checksum of the tensors, and raises ``ValueError`` on a truncated,
altered or foreign file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .._io import atomic_torch_save
from .build import data_fingerprint
from .kernels import ProximityKernel

# Tables are typed loosely (Any): this module sits below posterior_table.py, which imports it.

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "cache_path", "cached_table", "load_table", "save_table", "tensor_checksum"]

FORMAT_NAME = "pyro_mapa.PosteriorTable"
FORMAT_VERSION = 1
_OPTIONAL_TENSORS = ("log_normalizer", "log_normalizer_se", "row_hashes")


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors' names and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def _payload_tensors(table: Any) -> dict[str, Tensor]:
    out = {
        "indices": table.indices.detach().cpu().contiguous(),
        "log_probs": table.log_probs.detach().cpu().contiguous(),
    }
    for name in _OPTIONAL_TENSORS:
        value = getattr(table, name)
        if value is not None:
            out[name] = value.detach().cpu().contiguous()
    return out


def save_table(table: Any, path: str | os.PathLike) -> None:
    """Writes ``table`` atomically in the tensor-only, checksummed format."""
    tensors = _payload_tensors(table)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_categories": table.num_categories,
        "fingerprint": table.fingerprint,
        "config": table.config,
        "row_offset": table.row_offset,
        "total_rows": table.total_rows,
        "row_shape": table.row_shape,
        "checksum": tensor_checksum(tensors),
    }
    atomic_torch_save({"meta": json.dumps(meta), **tensors}, path)


def load_table(cls: type, path: str | os.PathLike) -> Any:
    """Reads a table written by :func:`save_table`; a truncated or altered file raises ``ValueError``."""
    expected = "a file written by PosteriorTable.save (a zip archive holding 'meta' and the table's tensors)"
    try:
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path!s} is empty, not {expected}; rebuild the table with PosteriorTable.from_data")
        with open(path, "rb") as f:
            head = f.read(16)
        if not head.startswith(b"PK"):  # a damaged archive still starts so, and is reported below
            raise ValueError(f"{path!s} is not a zip archive (it starts with {head!r}), not {expected}")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # torch raises several types for damaged or foreign files
        raise ValueError(
            f"could not read a PosteriorTable from {path!s} ({type(e).__name__}: {e}); expected {expected}"
        ) from e
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), str):
        found = type(payload).__name__ + (f" with keys {sorted(map(str, payload))[:5]}" if isinstance(payload, dict) else "")
        raise ValueError(f"{path!s} holds a {found}, not {expected}; it is not a pyro_mapa PosteriorTable file")
    try:
        meta = json.loads(payload["meta"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!s} has an unreadable 'meta' entry ({e}); expected {expected}") from e
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!s} is not a pyro_mapa PosteriorTable file")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!s} has table format version {meta.get('version')}, this pyro_mapa reads "
            f"version {FORMAT_VERSION}; rebuild the table with PosteriorTable.from_data"
        )
    tensors = {k: v for k, v in payload.items() if k != "meta"}
    if tensor_checksum(tensors) != meta.get("checksum"):
        raise ValueError(f"{path!s} is damaged or was altered (checksum mismatch); rebuild it")
    table = cls(
        tensors["indices"],
        tensors["log_probs"],
        meta["num_categories"],
        tensors.get("log_normalizer"),
        meta.get("fingerprint"),
        meta.get("config"),
        meta.get("row_offset", 0),
        meta.get("total_rows"),
        tensors.get("row_hashes"),
        meta.get("row_shape"),
    )
    table.log_normalizer_se = tensors.get("log_normalizer_se")
    return table


def cache_path(data: Tensor, kernel: ProximityKernel, cache_dir: str | os.PathLike, max_support: int | None) -> Path:
    """The cache file of a table: a hash of the data fingerprint, the kernel's config and ``max_support``."""
    key = json.dumps(
        {"data": data_fingerprint(data), "kernel": kernel.config(), "max_support": max_support}, sort_keys=True
    )
    return Path(cache_dir) / f"mapa-table-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"


def cached_table(
    data: Tensor,
    kernel: ProximityKernel,
    cache_dir: str | os.PathLike,
    build: Callable[[], PosteriorTable],
    load: Callable[[Path], PosteriorTable],
    max_support: int | None,
) -> Any:
    """Loads the cached table of ``(data, kernel, max_support)`` or builds and saves it.

    Safe for several processes at once: each writes a complete temporary file and renames
    it atomically, so a reader sees either no file or a whole one. A damaged or stale cache
    file is rebuilt.
    """
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a folder path (str or os.PathLike), got {type(cache_dir).__name__}")
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ValueError(
            f"cache_dir={str(cache_dir)!r} is a file, not a folder; pass a folder for the cached tables "
            "(it is created if missing)"
        )
    path = cache_path(data, kernel, cache_dir, max_support)
    fingerprint = data_fingerprint(data)
    if path.exists():
        try:
            table = load(path)
            if table.fingerprint == fingerprint:
                return table
        except ValueError:
            pass  # damaged or stale: rebuild below
    table = build()
    save_table(table, path)
    return table
