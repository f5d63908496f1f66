"""Is a table built on the model's data? Per-row hashes, checked at the first training step.

A :class:`~pyro_mapa.PosteriorTable` built by ``from_data`` stores, besides the SHA-256
fingerprint of the whole data tensor, one 64-bit hash per data row
(:func:`~pyro_mapa.table.build.row_hashes`, values rounded to float32) and the shape of a
row. A table is only meaningful for the data it was built on: a stale cache file or a
table of another split trains silently but on the wrong posterior. With the row hashes
a training step can check the rows it actually sees, whatever the model looks like:

- a model with a ``data`` attribute (``EmpiricalizedModel``, a user's ``nn.Module``):
  all ``N`` rows are compared, once;
- any other model (e.g. a plain function closing over ``X``): the observed values of
  the data plate's sites for the minibatch rows, at the first step (see
  :meth:`~pyro_mapa.MAPAGuide.check_model_data`).

Hashes of float32-rounded values make float32 and float64 copies of the same data agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import as_data_tensor, as_index_tensor
from .build import data_fingerprint, row_hashes

# Tables are typed loosely (Any): this module sits below posterior_table.py, which imports it.

__all__ = ["check_table_data", "mismatched_rows", "raise_if_mismatched"]


def mismatched_rows(table: Any, rows: Tensor, values: Tensor) -> Tensor | None:
    """The data rows among ``rows`` whose ``values`` differ from the data the table was built on.

    Arguments:
        table: The table.
        rows: ``(B,)`` data rows.
        values: ``(B, *row_shape)`` values of those rows (any float dtype or device).

    Returns:
        A CPU long tensor of the differing rows (empty if all agree), or ``None`` if the
        table cannot tell (it has no row hashes, or ``values`` has another row shape).
    """
    if table.row_hashes is None or tuple(values.shape[1:]) != table.row_shape or values.shape[0] != len(rows):
        return None
    rows = as_index_tensor(rows, table.total_rows, "rows", device="cpu", one_dim=True)
    return rows[row_hashes(values) != table.row_hashes[rows]]


def raise_if_mismatched(bad: Tensor | None, what: str, hint: str = "") -> None:
    """Raises ``ValueError`` naming the first differing row, if ``bad`` holds any."""
    if bad is not None and bad.numel():
        raise ValueError(
            f"the PosteriorTable was built on different data than the {what} (data fingerprint "
            f"mismatch in {bad.numel()} row(s), first: row {int(bad[0])}), e.g. a stale cache file or "
            f"another split; rebuild it with PosteriorTable.from_data(data, kernel) on the model's data{hint}"
        )


def check_table_data(table: Any, data: Tensor, what: str = "data") -> None:
    """Raises ``ValueError`` if ``table`` was built on other data than ``data`` (all rows).

    Per-row hashes when the table has them (float32 and float64 copies agree), else the
    exact fingerprint; a table made without data (``uniform``, ``from_log_probs``)
    accepts any data.
    """
    data = as_data_tensor(data, what)
    if table.row_hashes is not None:
        if data.shape[0] != table.total_rows or tuple(data.shape[1:]) != table.row_shape:
            raise ValueError(
                f"the PosteriorTable was built on data of shape {(table.total_rows, *table.row_shape)}, "
                f"the {what} has shape {tuple(data.shape)} (data fingerprint mismatch); rebuild it with "
                "PosteriorTable.from_data(data, kernel)"
            )
        raise_if_mismatched(mismatched_rows(table, torch.arange(table.total_rows), data), what)
    elif table.fingerprint is not None and data_fingerprint(data) != table.fingerprint:
        raise ValueError(
            f"the PosteriorTable was built on different data than the {what} (data fingerprint mismatch); "
            "rebuild it with PosteriorTable.from_data(data, kernel)"
        )
