"""The one module that touches Pyro names its public modules do not export.

Everything else in :mod:`pyro_mapa` imports only what ``pyro``, ``pyro.infer`` (and ``pyro.infer.autoguide``),
``pyro.poutine``, ``pyro.distributions``, ``pyro.optim`` and ``pyro.nn`` export; when a Pyro
release moves one of the internals below, this file (and its tests,
``tests/infer/test_pyro_compat.py``) is the only place to change. Checked with
pyro-ppl 1.8.6 and 1.9.x.

- :class:`Messenger`: the base class of Pyro's effect handlers (``pyro.poutine.messenger``).
- :func:`site_is_subsample`: whether a trace site is a plate's ``_Subsample`` site.
- :func:`scale_and_mask`: ``log_prob`` times a site's scale, zeroed where masked.
- :func:`get_importance_trace`: guide trace, then model replayed against it, log-probs computed.
- :func:`get_traces`: ``ELBO._get_traces``, the (vectorized) particle loop of an ``ELBO``.
- :data:`VECTORIZED_PARTICLE_PLATE`: the plate name ``ELBO`` uses for vectorized particles.
- :func:`detach_distribution`: a copy of a distribution with its parameters detached.
- :func:`get_plates`: the plates enclosing the current sample statement (``pyro.poutine.runtime``).
- :class:`QuietNestingGuess`: an ``ELBO`` mixin whose first-call ``max_plate_nesting`` guess does not log
  Pyro's ``INFO Guessed max_plate_nesting`` line (``ELBO._guess_max_plate_nesting``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from pyro.distributions.util import detach as _detach
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import get_plates
from pyro.poutine.util import site_is_subsample

__all__ = [
    "QuietNestingGuess",
    "VECTORIZED_PARTICLE_PLATE",
    "Messenger",
    "detach_distribution",
    "get_importance_trace",
    "get_plates",
    "get_traces",
    "scale_and_mask",
    "site_is_subsample",
]

VECTORIZED_PARTICLE_PLATE = "num_particles_vectorized"


def get_traces(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Iterator[Any]:
    """``(model_trace, guide_trace)`` pairs from ``elbo``'s own particle loop (``ELBO._get_traces``)."""
    return elbo._get_traces(model, guide, args, kwargs)


def detach_distribution(fn: Any) -> Any:
    """A shallow copy of the distribution ``fn`` whose tensor parameters are detached (for DReG)."""
    return _detach(fn)


class _DropNestingGuess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Guessed max_plate_nesting")


class QuietNestingGuess:
    """Mixin for our ``ELBO`` subclasses: the ``max_plate_nesting`` guess without Pyro's INFO log line.

    Only that one record is dropped, only while our ELBO guesses: Pyro >= 1.9 logs it on the
    ``pyro.infer.elbo`` logger, Pyro 1.8 on the root logger (``logging.info``), so both get the filter.
    """

    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        loggers, quiet = (logging.getLogger("pyro.infer.elbo"), logging.getLogger()), _DropNestingGuess()
        for logger in loggers:
            logger.addFilter(quiet)
        try:
            super()._guess_max_plate_nesting(model, guide, args, kwargs)  # type: ignore[misc]
        finally:
            for logger in loggers:
                logger.removeFilter(quiet)

