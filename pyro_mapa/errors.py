"""Errors and argument checks shared by every layer of :mod:`pyro_mapa`.

Every check raises a :class:`TypeError` or :class:`ValueError` whose message names the
argument and the fix, so a bad input never becomes a silent NaN, a silently aliased
row, or a raw error many frames deep. What each input gets (docs/reliability.md):

- data (``as_data_tensor``): a NumPy array is converted (to the networks' dtype); a
  list, an integer or ``bool`` tensor, a tensor on the ``meta`` device, fewer than two
  dimensions, no rows, NaN or inf are refused;
- data against networks (``check_matches_networks``): another floating dtype or
  device than the networks' parameters is refused, naming ``.float()``/``.double()``/``.to``;
- row indices (``as_index_tensor``): a list, tuple or NumPy array of integers is
  converted to a ``long`` tensor; floating or ``bool`` indices, negative indices and
  indices ``>= N`` are refused (a ``-1`` would otherwise pick the last row silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from pyro.infer import is_validation_enabled
from torch import Tensor, nn

__all__ = [
    "NonFiniteLossError",
    "as_data_tensor",
    "as_index_tensor",
    "call_network",
    "check_count",
    "check_matches_networks",
    "check_nonnegative_int",
    "check_positive_int",
    "first_parameter",
]


class NonFiniteLossError(ValueError):
    """Raised when a loss or bound estimate is NaN or infinite, naming the term that broke."""


def check_nonnegative_int(value: Any, name: str) -> int:
    """Returns ``value`` if it is a non-negative ``int`` (not a ``bool``); raises otherwise.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_count(value: Any, name: str) -> int:
    """Deprecated name of :func:`check_nonnegative_int` (removed in the next release)."""
    import warnings

    warnings.warn("pyro_mapa.errors.check_count is deprecated: use check_nonnegative_int", DeprecationWarning,
                  stacklevel=2)
    return check_nonnegative_int(value, name)


def check_positive_int(value: Any, name: str) -> int:
    """Like :func:`check_nonnegative_int`, but ``value`` must be at least 1."""
    if check_nonnegative_int(value, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_not_meta(x: Tensor, name: str) -> None:
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds shapes but no values; "
            f"pass real values, e.g. {name}.to('cpu') after filling it, or a tensor on 'cpu'/'cuda'"
        )


def first_parameter(modules: Iterable[nn.Module]) -> Tensor | None:
    """The first floating-point parameter of ``modules`` (``None`` if they have none)."""
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return p
    return None


def as_data_tensor(
    data: Any,
    name: str = "data",
    *,
    networks: dict[str, nn.Module] | None = None,
    min_dim: int = 2,
) -> Tensor:
    """Checks observations of shape ``(N, ...)``; converts a NumPy array to a tensor.

    A NumPy array (NumPy's default is float64) becomes a tensor of the dtype of the
    first floating parameter of ``networks`` (float32 when they have none), on that
    parameter's device: that is what the networks can consume. A torch tensor is never
    converted: a float64 tensor with float32 networks is refused by
    :func:`check_matches_networks` rather than silently rounded.

    Arguments:
        data: The observations.
        name: The argument's name, for messages.
        networks: ``{name: module}`` whose parameters ``data`` must match.
        min_dim: Fewest dimensions accepted (2: one row per observation).

    Raises:
        TypeError: not a tensor or array; not floating point; dtype of the networks differs.
        ValueError: ``meta`` device; too few dimensions or no rows; NaN or inf; device differs.
    """
    networks = networks or {}
    if isinstance(data, np.ndarray):
        p = first_parameter(networks.values())
        dtype = p.dtype if p is not None else torch.float32
        if data.dtype.kind not in "biuf":
            raise TypeError(f"{name} is a NumPy array of dtype {data.dtype}; pass numbers (e.g. x.astype('float32'))")
        data = torch.as_tensor(data, dtype=dtype, device=None if p is None else p.device)
    if not isinstance(data, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, D), got {type(data).__name__}; "
            f"pass torch.as_tensor({name}, dtype=torch.float32)"
        )
    _check_not_meta(data, name)
    if data.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (N, D), one row per observation, got shape {tuple(data.shape)}; "
            f"for one number per observation pass {name}.unsqueeze(-1)"
        )
    if data.shape[0] < 1 or data[0].numel() < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(data.shape)}")
    if not data.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {data.dtype}; pass {name}.float()"
        )
    finite = torch.isfinite(data).reshape(data.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().reshape(-1)
        raise ValueError(
            f"{name} contains NaN or inf in {bad.numel()} row(s) (first: row {int(bad[0])}); "
            "remove or impute those rows"
        )
    check_matches_networks(data, networks, name)
    return data


def check_matches_networks(data: Tensor, networks: dict[str, nn.Module], name: str = "data") -> None:
    """Raises if ``data`` has another floating dtype or device than the networks' parameters.

    Metadata only (no host sync), so it is cheap enough for every call.
    """
    for net_name, module in networks.items():
        p = first_parameter([module])
        if p is None:
            continue
        if p.dtype != data.dtype:
            named = {torch.float32: "float()", torch.float64: "double()"}
            fix = named.get(p.dtype, f"to({p.dtype})")
            convert = named.get(data.dtype, f"to({data.dtype})")
            nets = ", ".join(f"{n}.{convert}" for n in networks)
            raise TypeError(
                f"{name} has dtype {data.dtype} but the {net_name}'s parameters are {p.dtype}; "
                f"pass {name}.{fix}, or convert the networks to the data's dtype ({nets})"
            )
        if p.device != data.device:
            raise ValueError(
                f"{name} is on device {data.device} but the {net_name}'s parameters are on {p.device}; "
                f"move both to one device (e.g. module.to({str(data.device)!r}) on the model, or {name}.to(...))"
            )


def as_index_tensor(
    index: Any,
    num_rows: int,
    name: str = "batch_idx",
    *,
    device: torch.device | str | None = None,
    low: int = 0,
    one_dim: bool = True,
    per_step: bool = False,
) -> Tensor:
    """Row indices in ``[low, low + num_rows)`` as a ``long`` tensor.

    A list, tuple, Python ``int`` or NumPy array of integers is converted. Negative
    indices are refused: ``x[-1]`` would silently be the last row. One host sync (the
    range check) per call on an accelerator.

    Arguments:
        index: The indices.
        num_rows: ``N``, the number of valid rows.
        name: The argument's name, for messages.
        device: Where the result should live (default: where ``index`` is; CPU for lists).
        low: The first valid row (a shard's offset); the valid range is ``[low, low + num_rows)``.
        one_dim: Require a 1-D index (a minibatch); ``False`` accepts any shape.
        per_step: The call sits on a training step's path (a model, guide or ELBO): the range check,
            the only host sync here, then runs only while Pyro's validation is on
            (``pyro.enable_validation()``, Pyro's default), as Pyro's distributions check their
            arguments. Type and shape checks always run.

    Raises:
        TypeError: floating, complex or ``bool`` indices, or not index-like.
        ValueError: ``meta`` device, wrong shape, empty, or out of range.
    """
    if isinstance(index, (list, tuple, int, np.ndarray, np.integer)) and not isinstance(index, bool):
        if isinstance(index, np.ndarray) and index.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must hold integer row indices, got a NumPy array of dtype {index.dtype}; "
                f"pass {name}.astype('int64')"
            )
        try:
            index = torch.as_tensor(index, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor of integer row indices; could not convert it: {e}") from e
        if index.numel() == 0:
            index = index.long()
    if not isinstance(index, Tensor):
        raise TypeError(
            f"{name} must be a tensor of integer row indices (e.g. torch.randperm(N)[:100]), "
            f"got {type(index).__name__}"
        )
    _check_not_meta(index, name)
    if index.dtype == torch.bool:
        raise TypeError(
            f"{name} is a boolean mask; pass row indices instead: {name}.nonzero().squeeze(-1)"
        )
    if index.is_floating_point() or index.is_complex():
        raise TypeError(
            f"{name} must hold integer row indices, got dtype {index.dtype}; pass {name}.long()"
        )
    if one_dim and index.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of row indices, got shape {tuple(index.shape)}")
    if one_dim and index.numel() == 0:
        raise ValueError(f"{name} is empty; a minibatch needs at least one row index")
    index = index.to(device=device, dtype=torch.long)
    if per_step and not is_validation_enabled():
        return index
    if index.numel() and bool(((index < low) | (index >= low + num_rows)).any()):
        lo, hi = int(index.min()), int(index.max())
        hint = " (negative indices are refused: they would silently pick rows from the end)" if lo < 0 else ""
        raise ValueError(
            f"{name} must hold row indices in [{low}, {low + num_rows}), got values from {lo} to {hi}{hint}"
        )
    return index


def call_network(net: nn.Module, x: Tensor, name: str, example: str) -> Tensor:
    """``net(x)``, turning a shape mismatch inside ``net`` into a ``ValueError`` that names the fix."""
    try:
        return net(x)
    except RuntimeError as e:
        if "shapes cannot be multiplied" not in str(e) and "size mismatch" not in str(e):
            raise
        raise ValueError(
            f"the {name} cannot take inputs of shape {tuple(x.shape)} (last dim {x.shape[-1]}): {e}; "
            f"its input size must be {x.shape[-1]}, e.g. {example}"
        ) from e

