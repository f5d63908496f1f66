"""The MAPA guide: a fixed, parameter-free posterior over which code generated each point."""

from __future__ import annotations

from typing import Callable

import pyro
from torch import Tensor

from ..models.distributions import TableCategorical
from ..table.posterior_table import PosteriorTable
from ._tracing import peek_index_site

__all__ = ["MAPAGuide"]


class MAPAGuide:
    """Samples the model's index site from a :class:`~pyro_mapa.PosteriorTable` (Eq. 8).

    The guide is called with the model's own arguments. Inside a plate of the same
    name as the model's data plate it samples ``site`` from the table rows of the
    model's minibatch. The minibatch is found, in order of preference, by:

    1. ``create_plates(*args, **kwargs)``, returning the data plate (as Pyro's
       :class:`~pyro.infer.autoguide.AutoGuide` does for subsampling);
    2. running ``model`` up to the index site (cheap: nothing before it is a network);
    3. otherwise a plain ``pyro.plate(plate, N)``, whose subsample an enclosing
       handler may supply: :class:`~pyro_mapa.TraceMAPA_ELBO` does this, so the plain
       ``MAPAGuide(table, site, plate)`` needs nothing else there. With another
       ELBO (e.g. ``Trace_ELBO``, for which the guide is a proposal with ``K=0, S=1``)
       and a subsampling model, pass ``model`` or ``create_plates``.

    The guide has no parameters and nothing in it is differentiated (METHOD.md §5,
    fact 5).

    Arguments:
        table: The posterior table, one row per data point.
        site: Name of the model's index sample site (a categorical over ``N`` codes).
        plate: Name of the model's data plate.
        model: Optional model, used to find its minibatch.
        create_plates: Optional callable returning the data plate for the model's arguments.
        data: Optional ``(N, D)`` data of the model: checked once against the table's
            data fingerprint, so a table built on other data (a stale cache) is caught.
    """

    def __init__(
        self,
        table: PosteriorTable,
        site: str = "c",
        plate: str = "data",
        *,
        model: Callable | None = None,
        create_plates: Callable | None = None,
        data: Tensor | None = None,
    ) -> None:
        if not isinstance(table, PosteriorTable):
            raise TypeError(f"table must be a PosteriorTable, got {type(table).__name__}")
        if data is not None:
            table.check_data(data)
        if not isinstance(site, str) or not isinstance(plate, str):
            raise TypeError("site and plate must be the names (str) of the model's index site and data plate")
        self.table = table
        self.site = site
        self.plate = plate
        self.model = model
        self.create_plates = create_plates

    def _plate(self, args: tuple, kwargs: dict):
        n = self.table.total_rows
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
        return pyro.plate(self.plate, n)

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

    def distribution(self, rows: Tensor) -> TableCategorical:
        """The guide's distribution for the given data rows."""
        r = self.table.rows(rows)
        return TableCategorical(r.indices, r.log_probs, self.table.num_categories)

    def __call__(self, *args, **kwargs) -> Tensor:
        with self._plate(args, kwargs) as idx:
            return pyro.sample(self.site, self.distribution(idx))

    def __repr__(self) -> str:
        return f"MAPAGuide({self.table!r}, site={self.site!r}, plate={self.plate!r})"
