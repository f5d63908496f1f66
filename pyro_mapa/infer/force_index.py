"""Index forcing: run a model with its index site set to given code indices, for each point of its minibatch.

:class:`~pyro_mapa.TraceMAPA_ELBO` evaluates the model at ``K + S`` indices per point in one
vectorized pass: the ``K`` most probable entries of the point's table row and ``S`` draws of the
remainder. Both halves are here, usable on their own:

- :func:`mapa_index_values`, a pure function of the table, the rows, ``K``, ``S`` and the random
  draws, returning the ``(K + S, B)`` indices and the log-weight corrections of the bound;
- :class:`ForceIndexMessenger` (and the wrapper :func:`force_index`, in the style of
  ``poutine.condition``), which sets the index site to those values for the rows the model's data
  plate subsamples, reshaped to the plate's dim, and marks the site observed so the model's own
  log-probability of the index (``-log N`` for the uniform prior) is counted.

For example, to evaluate a trained model at each point's top-3 codes::

    values = lambda rows: mapa_index_values(table, rows, 3, 0)[0]
    with pyro.plate("particles", 3, dim=-2):
        trace = poutine.trace(force_index(model, "c", values)).get_trace(rows)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import as_index_tensor
from ._pyro_compat import Messenger, site_is_subsample
from ._tracing import plate_frame

__all__ = ["ForceIndexMessenger", "force_index", "mapa_index_values"]


def mapa_index_values(
    table: Any,
    rows: Tensor,
    num_top: int,
    num_samples: int,
    *,
    remainder: str = "with_replacement",
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The MAPA bound's ``K + S`` indices per row and their log-weight corrections.

    Arguments:
        table: A :class:`~pyro_mapa.PosteriorTable`.
        rows: ``(B,)`` row indices.
        num_top: ``K``, the most probable entries taken exactly (correction 0).
        num_samples: ``S``, remainder draws: with replacement, each corrected by
            :math:`\\log \\tilde q_n(i) + \\log S`; without replacement, by its log inclusion
            probability.
        remainder: ``"with_replacement"`` or ``"without_replacement"``.
        generator, uniforms: The remainder's random draws (see
            :meth:`~pyro_mapa.PosteriorTable.sample_remainder`); with the same ``uniforms`` the
            result is a deterministic function of the arguments.

    Returns:
        ``values`` and ``correction``, both ``(P, B)`` with ``P = K + S`` (fewer draws when the
        remainder is empty or, without replacement, smaller than ``S``).
    """
    top = table.top_k(rows, num_top)
    if remainder == "with_replacement":
        rest = table.sample_remainder(rows, num_top, num_samples, generator=generator, uniforms=uniforms)
        s = rest.indices.shape[1]
        rest_correction = rest.log_probs + (math.log(s) if s else 0.0)
    elif remainder == "without_replacement":
        rest = table.sample_remainder_without_replacement(
            rows, num_top, num_samples, generator=generator, uniforms=uniforms
        )
        rest_correction = rest.log_probs  # log inclusion probabilities
    else:
        raise ValueError(f"remainder must be 'with_replacement' or 'without_replacement', got {remainder!r}")
    values = torch.cat([top.indices, rest.indices], dim=1).T
    correction = F.pad(rest_correction, (num_top, 0)).T  # zeros for the top K: one op
    return values, correction


class ForceIndexMessenger(Messenger):
    """Sets sample site ``site`` (inside plate ``plate``) to ``values(rows)`` for the plate's own minibatch.

    The data plate's subsample site comes before the index site, so its value (the model's
    minibatch, however the model chose it) is known when the index site is reached. The values,
    ``(P, B)``, are placed with ``P`` at dim ``particle_dim`` (default: left of the model's
    plates, ``-(max_plate_nesting + 1)``, as a vectorized particle plate there expects) and ``B``
    at the data plate's dim; the site is marked observed.

    Arguments:
        site: The index site's name.
        values: A ``(P, B)`` tensor for a known minibatch, or a callable ``rows -> (P, B)`` tensor
            (or ``rows -> (values, correction)``, whose correction is kept in ``self.correction``).
        plate: The data plate's name.
        num_rows: ``N``, for checking the minibatch's row indices (default: not checked).
        max_plate_nesting: The model's plate nesting (default: the data plate's depth).
        check_site: Optional ``check_site(msg, full_size)``, called at the index site before forcing.

    Attributes:
        rows, values, correction: What the last run used (``None`` until the site is reached).
    """

    def __init__(
        self,
        site: str,
        values: Tensor | Callable[[Tensor], Any],
        plate: str = "data",
        *,
        num_rows: int | None = None,
        max_plate_nesting: int | None = None,
        check_site: Callable[[dict, int], None] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(site, str) or not isinstance(plate, str):
            raise TypeError("site and plate must be the names (str) of the index site and the data plate")
        if not (callable(values) or isinstance(values, Tensor)):
            raise TypeError(f"values must be a (P, B) tensor or a callable rows -> values, got {type(values).__name__}")
        self.site, self.plate, self.source = site, plate, values
        self.num_rows, self.max_plate_nesting, self.check_site = num_rows, max_plate_nesting, check_site
        self.rows: Tensor | None = None
        self.values: Tensor | None = None
        self.correction: Tensor | None = None

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] == self.plate and site_is_subsample(msg):
            # A list or NumPy array of row indices (a user's own model) becomes a long tensor; bad ones are refused.
            self.rows = as_index_tensor(msg["value"], self.num_rows if self.num_rows is not None else 2**62,
                                        per_step=True)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] != self.site:
            return
        frame = plate_frame(msg, self.plate)
        if frame is None or self.rows is None:
            return  # left unforced: the caller reports the precise error
        if self.check_site is not None:
            self.check_site(msg, int(frame.full_size if frame.full_size is not None else frame.size))
        out = self.source(self.rows) if callable(self.source) else self.source
        values, correction = out if isinstance(out, tuple) else (out, None)
        values = values.to(self.rows.device)
        if values.dim() != 2 or values.shape[1] != self.rows.shape[0]:
            raise ValueError(
                f"values must have shape (P, B={self.rows.shape[0]}) for the plate's minibatch, got {tuple(values.shape)}"
            )
        num_particles, batch = values.shape
        nesting = self.max_plate_nesting if self.max_plate_nesting is not None else -frame.dim
        dim = frame.dim
        between, after = (1,) * (nesting + dim), (1,) * (-dim - 1)
        msg["value"] = values.reshape((num_particles,) + between + (batch,) + after)
        msg["is_observed"] = True
        self.values, self.correction = values, correction


def force_index(model: Callable, site: str, values: Tensor | Callable[[Tensor], Any], plate: str = "data", **kwargs):
    """``model`` with its index ``site`` forced to ``values`` (see :class:`ForceIndexMessenger`), like ``poutine.condition``."""
    return ForceIndexMessenger(site, values, plate, **kwargs)(model)
