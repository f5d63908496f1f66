"""The MAPA guide: a fixed, parameter-free posterior over which code generated each point."""

from __future__ import annotations

from collections.abc import Callable
import warnings
from typing import Any

import pyro
import torch
from torch import Tensor

from ..errors import as_data_tensor, as_index_tensor
from ..models.distributions import TableCategorical
from ..table.data_check import check_table_data, raise_if_mismatched
from ..table.posterior_table import PosteriorTable
from ._pyro_compat import site_is_subsample
from ._tracing import peek_index_site, plate_frame

__all__ = ["MAPAGuide"]


class MAPAGuide:
    """Samples the model's index site from a :class:`~pyro_mapa.PosteriorTable` (Eq. 8).

    The guide is called with the model's own arguments. Inside a plate of the same
    name as the model's data plate it samples ``site`` from the table rows of the
    model's minibatch. The minibatch is found, in order of preference, by:

    1. the keyword ``rows`` of the call (the convention of :func:`~pyro_mapa.empiricalize`:
       ``svi.step(X[rows], rows=rows)``);
    2. ``create_plates(*args, **kwargs)``, returning the data plate (as Pyro's
       :class:`~pyro.infer.autoguide.AutoGuide` does for subsampling);
    3. running ``model`` up to the index site (cheap: nothing before it is a network);
    4. otherwise a plain ``pyro.plate(plate, N)``, whose subsample an enclosing
       handler may supply: :class:`~pyro_mapa.TraceMAPA_ELBO` does this, so the plain
       ``MAPAGuide(table, site, plate)`` needs nothing else there. With another
       ELBO (e.g. ``Trace_ELBO``, for which the guide is a proposal with ``K=0, S=1``)
       and a subsampling model, pass ``rows``, ``model`` or ``create_plates``: without
       them the guide samples all ``N`` rows, and warns.

    Global latent sites of the model (outside the data plate) get their own guide,
    ``globals_guide`` (e.g. ``AutoNormal(poutine.block(model, hide=[site]))``), run first;
    :class:`~pyro_mapa.TraceMAPA_ELBO` draws them once per step and counts
    :math:`\\log p - \\log q` of the globals once. Composing the two guides in an
    :class:`~pyro.infer.autoguide.AutoGuideList` works the same way.

    The guide has no parameters and nothing in it is differentiated (docs/method.md §5,
    fact 5).

    A table built on other data than the model's (a stale cache, another split) is
    refused at the first :class:`~pyro_mapa.TraceMAPA_ELBO` step
    (:meth:`check_model_data`), without ``data=``: the model's ``data`` attribute if it
    has one, else the values its data plate observes for the minibatch, are compared
    with the table's per-row hashes. ``data=`` checks all rows at construction.

    Arguments:
        table: The posterior table, one row per data point.
        site: Name of the model's index sample site (a categorical over ``N`` codes).
        plate: Name of the model's data plate.
        model: Optional model, used to find its minibatch.
        create_plates: Optional callable returning the data plate for the model's arguments.
        data: Optional ``(N, D)`` data of the model: checked at once against the table's
            per-row hashes (or data fingerprint), so a table built on other data is caught.
        check_data: Compare the model's data with the table's at the first step (default
            ``True``); ``False`` for a table built on purpose on other features of the
            same points than the model observes.
        globals_guide: Optional guide for the model's global latent sites (reparameterized,
            outside the data plate), called with the model's arguments before the index site.
    """

    def __init__(
        self,
        table: PosteriorTable,
        site: str = "c",
        plate: str = "data",
        *,
        model: Callable | None = None,
        create_plates: Callable | None = None,
        data: Tensor | Any | None = None,
        check_data: bool = True,
        globals_guide: Callable | None = None,
    ) -> None:
        if not isinstance(table, PosteriorTable):
            raise TypeError(
                f"table must be a PosteriorTable (e.g. PosteriorTable.from_data(X, kernel)), got {type(table).__name__}"
            )
        if data is not None:
            check_table_data(table, as_data_tensor(data, "data"), "data passed to MAPAGuide(data=...)")
        if not isinstance(site, str) or not isinstance(plate, str):
            raise TypeError("site and plate must be the names (str) of the model's index site and data plate")
        self.check_data = bool(check_data)
        self._checked_models: set[int] = set()
        self.table = table
        self.site = site
        self.plate = plate
        self.model = model
        self.create_plates = create_plates
        if globals_guide is not None and not callable(globals_guide):
            raise TypeError(
                f"globals_guide must be a Pyro guide (callable), e.g. AutoNormal(poutine.block(model, hide=[{site!r}])), "
                f"got {type(globals_guide).__name__}"
            )
        self.globals_guide = globals_guide
        self._subsample_supplied = False  # set by TraceMAPA_ELBO while it supplies the minibatch

    def _plate(self, args: tuple, kwargs: dict):
        n = self.table.total_rows
        rows = kwargs.get("rows")
        if rows is not None:
            rows = as_index_tensor(rows, n, "rows", per_step=True)
            dim = None
            if self.model is not None:
                dim = peek_index_site(self.model, self.site, self.plate, args, kwargs).plate_dim
            return pyro.plate(self.plate, n, subsample=rows, dim=dim)
        if self.create_plates is not None:
            plates = self.create_plates(*args, **kwargs)
            plates = plates if isinstance(plates, (list, tuple)) else [plates]
            for p in plates:
                if getattr(p, "name", None) == self.plate:
                    return p
            raise ValueError(f"create_plates returned no plate named {self.plate!r}")
        if self.model is not None:
            info = peek_index_site(self.model, self.site, self.plate, args, kwargs)
            self.check_model_site(info.site, info.plate_size)
            return pyro.plate(self.plate, n, subsample=info.subsample, dim=info.plate_dim)
        plate = pyro.plate(self.plate, n)  # an enclosing handler may condition its subsample
        if plate.subsample_size == n and not self._subsample_supplied:
            warnings.warn(
                f"MAPAGuide cannot see the model's minibatch (no rows=, model= or create_plates=), so it samples "
                f"{self.site!r} for all N={n} rows; with Trace_ELBO and a subsampling model pass "
                "MAPAGuide(..., model=model) or call with rows= (this also silences the warning for a full-batch model)",
                UserWarning,
                stacklevel=3,
            )
        return plate

    def check_model_site(self, site: dict, plate_size: int) -> None:
        """Raises ``ValueError`` if the model's index site or plate does not match the table."""
        fn = site["fn"]
        support = getattr(fn, "support", None)
        upper = getattr(support, "upper_bound", None)
        if upper is None:
            raise ValueError(
                f"the model's index site {self.site!r} must be a categorical over the N codes "
                f"(e.g. dist.Categorical(logits=torch.zeros(N))), got {type(fn).__name__}"
            )
        n_model = int(upper) + 1
        if n_model != self.table.num_categories:
            raise ValueError(
                f"the model's index site {self.site!r} has {n_model} categories but the table has "
                f"{self.table.num_categories}; build the table on the same data as the model"
            )
        if plate_size != self.table.total_rows:
            raise ValueError(
                f"the model's plate {self.plate!r} has size {plate_size} but the table has "
                f"{self.table.total_rows} rows; build the table on the model's data"
            )

    def check_model_data(self, model: Callable, trace: Any) -> None:
        """Refuses a table built on other data than ``model``'s; a no-op after the first check of a model.

        Called by :class:`~pyro_mapa.TraceMAPA_ELBO` with its model trace of the first step.
        If ``model`` has a ``data`` attribute of ``N`` rows, all rows are compared with the
        table's row hashes. Otherwise every observed site inside the data plate whose
        per-point shape is the table data's row shape is compared, for the minibatch rows,
        and the check passes if one of them matches (a model that observes something of
        another shape cannot be checked, and is not). A table made without data
        (``uniform``, ``from_log_probs``) accepts any data; one saved without row hashes
        is checked by its whole-data fingerprint against ``model.data`` only.

        Raises:
            ValueError: the observed rows differ from those the table was built on.
        """
        key = id(model)
        if not self.check_data or key in self._checked_models:
            return
        if self.table.row_hashes is None and self.table.fingerprint is None:
            return  # a table made without data (uniform, from_log_probs)
        data = getattr(model, "data", None)
        if isinstance(data, Tensor) and data.dim() >= 1 and data.shape[0] == self.table.total_rows:
            check_table_data(self.table, data, "model's data (model.data)")
        else:
            self._check_observed(trace)
        self._checked_models.add(key)

    def _check_observed(self, trace: Any) -> None:
        node = trace.nodes.get(self.plate)
        rows = node["value"] if node is not None and site_is_subsample(node) else None
        verdicts = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or not site["is_observed"] or name == self.site or site_is_subsample(site):
                continue
            frame = plate_frame(site, self.plate)
            value = site["value"]
            if frame is None or not isinstance(value, Tensor):
                continue
            dim = frame.dim - getattr(site["fn"], "event_dim", 0)
            if value.dim() < -dim:
                continue
            per_point = value.movedim(dim, 0)
            site_rows = rows if rows is not None else torch.arange(per_point.shape[0])
            bad = self.table.mismatched_rows(torch.as_tensor(site_rows), per_point)
            if bad is not None:
                verdicts.append((name, bad))
        if verdicts and all(bad.numel() for _, bad in verdicts):
            name, bad = verdicts[0]
            raise_if_mismatched(
                bad, f"model's observed site {name!r}",
                " (MAPAGuide(..., check_data=False) only for a table built on other features on purpose)",
            )

    def distribution(self, rows: Tensor) -> TableCategorical:
        """The guide's distribution for the given data rows."""
        r = self.table.rows(rows)
        return TableCategorical(r.indices, r.log_probs, self.table.num_categories)

    def __call__(self, *args, **kwargs) -> dict[str, Tensor]:
        """Samples the globals (if any), then the index site; returns ``{site: value}`` as an autoguide does."""
        result = {}
        if self.globals_guide is not None:
            result.update(self.globals_guide(*args, **kwargs) or {})
        with self._plate(args, kwargs) as idx:
            result[self.site] = pyro.sample(self.site, self.distribution(idx))
        return result

    def __repr__(self) -> str:
        return f"MAPAGuide({self.table!r}, site={self.site!r}, plate={self.plate!r})"
