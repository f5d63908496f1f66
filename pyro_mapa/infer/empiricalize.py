"""``empiricalize``: MAPA's empiricalized model (Eq. 6) made from a Pyro model the user already wrote.

A model with a local latent site ``z`` inside a data plate,

.. code-block:: python

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(0., 1.).expand([d]).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

becomes, without a change to its source,

.. math::
    c_n \\sim \\mathrm{Uniform}\\{0, .., N-1\\}, \\qquad z_n = g_\\phi(x_{c_n}), \\qquad
    x_n \\sim p_\\theta(x \\mid z_n),

the empiricalized model that :class:`~pyro_mapa.TraceMAPA_ELBO` trains with a
:class:`~pyro_mapa.MAPAGuide`. The site ``"latent"`` becomes the index site (a
:class:`~pyro_mapa.UniformIndex` over the ``N`` rows of ``data``, in the same plate) and
the value the model sees is the code :math:`g_\\phi(x_c)`, recorded as the deterministic
site ``"latent_code"`` (no log-density of its own). Global sites (outside the plate) are
left as they are.

The wrapped model takes the original arguments plus the keyword ``rows``, the minibatch's
row indices into ``data``: ``svi.step(X[rows], rows=rows)``. Two kinds of data plate work:

- a plate of the full size ``N`` (``pyro.plate("data", N, subsample=...)`` or with
  ``subsample_size``): ``rows`` becomes its subsample (a subsample the model passes must
  equal it); without ``rows`` the plate's own subsample is used;
- a plate whose size is the minibatch (``pyro.plate("data", x.shape[0])``, as in Pyro's
  VAE tutorial): the plate is made a subsample of ``N`` rows, so every site in it is
  scaled by ``N / B`` as a subsampled plate is, and its frame reports the full size
  ``N``. The model itself still sees positions ``0..B-1`` from ``with plate as i``.

Why a :class:`~pyro.poutine.messenger.Messenger` and not a ``pyro.infer.reparam``
strategy: a reparameterizer sees only the one site it rewrites, but empiricalizing also
rewrites the *plate* (its subsample and, for a minibatch-sized plate, its full size and
scale), which only a handler on the stack can do.

The encoder runs once per unique index in a step (``encoder_passes`` counts the rows);
the user's decoder runs on every one of the ``B (K + S)`` codes, as the model wrote it.

References:
    | Towards Model-Agnostic Posterior Approximation for Fast and Accurate
    | Variational Autoencoders (Yacoby, Pan and Doshi-Velez, AABI 2024)
    | https://arxiv.org/abs/2403.08941
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..errors import as_data_tensor, as_index_tensor, call_network
from ..models.distributions import UniformIndex
from ._pyro_compat import Messenger, site_is_subsample

__all__ = ["EmpiricalizeMessenger", "EmpiricalizedPyroModel", "empiricalize"]


class EmpiricalizeMessenger(Messenger):
    """The handler behind :func:`empiricalize`, for one call of the model.

    Arguments:
        wrapper: The :class:`EmpiricalizedPyroModel` (site, plate, encoder, data).
        rows: ``(B,)`` long tensor of the minibatch's rows of ``data``, or ``None``.
    """

    def __init__(self, wrapper: EmpiricalizedPyroModel, rows: Tensor | None) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.rows = rows
        self.scale: float | None = None  # N / B for a minibatch-sized plate, else None
        self.positions: Tensor | None = None
        self.seen_site = False
        self._in_index = False

    # -- the data plate --------------------------------------------------------------
    def _subsample(self, msg: dict) -> None:
        w, rows, n = self.wrapper, self.rows, self.wrapper.num_rows
        size = int(msg["fn"].size)
        given = msg["value"]
        if size == n:
            if rows is not None:
                if given is not None and not torch.equal(torch.as_tensor(given).to(rows.device), rows):
                    raise ValueError(
                        f"the model's plate {w.plate!r} subsamples other rows than rows=; pass the same "
                        "indices to the model and as rows= (or let rows= alone choose the minibatch)"
                    )
                msg["value"] = rows
            return
        if rows is None:
            raise ValueError(
                f"the model's plate {w.plate!r} has size {size}, not the N={n} rows of data: it is a "
                f"minibatch plate, so pass the minibatch's row indices as rows= (svi.step(X[rows], rows=rows))"
            )
        if rows.shape[0] != size:
            raise ValueError(
                f"rows has {rows.shape[0]} indices but the model's plate {w.plate!r} has size {size}; "
                f"rows must hold one row of data per element of the plate (or the plate must have size N={n})"
            )
        self.scale = n / size
        self.positions = torch.arange(size, device=rows.device)
        msg["value"] = rows  # recorded in the trace (read by TraceMAPA_ELBO); the model gets positions back

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] == self.wrapper.plate and site_is_subsample(msg) and self.positions is not None:
            msg["value"] = self.positions

    def _process_message(self, msg: dict) -> None:
        if self.scale is not None and msg["type"] == "sample" and not site_is_subsample(msg):
            stack = msg.get("cond_indep_stack") or ()
            if any(f.name == self.wrapper.plate for f in stack):
                n = self.wrapper.num_rows
                msg["cond_indep_stack"] = tuple(
                    f._replace(full_size=n) if f.name == self.wrapper.plate else f for f in stack
                )
                msg["scale"] = self.scale * msg["scale"]
        super()._process_message(msg)

    # -- the latent site ---------------------------------------------------------------
    def _pyro_sample(self, msg: dict) -> None:
        w = self.wrapper
        if msg["name"] == w.plate and site_is_subsample(msg):
            self._subsample(msg)
            return
        if msg["name"] != w.site or self._in_index:
            return
        self.seen_site = True
        fn = msg["fn"]
        frame = next((f for f in msg["cond_indep_stack"] if f.name == w.plate), None)
        if frame is None:
            inside = [f.name for f in msg["cond_indep_stack"]]
            raise ValueError(
                f"the model's site {w.site!r} is not inside a plate named {w.plate!r} (it is inside {inside}); "
                "empiricalize(..., plate=...) must name the data plate that holds the local latent"
            )
        if frame.dim is None:
            raise ValueError(f"plate {w.plate!r} must be vectorized (`with pyro.plate(...)`), not a Python loop")
        if msg["is_observed"]:
            raise ValueError(f"the model's site {w.site!r} is observed; empiricalize needs a latent site")
        support = getattr(fn, "support", None)
        if getattr(support, "is_discrete", False):
            raise ValueError(
                f"the model's site {w.site!r} is discrete ({type(fn).__name__}); empiricalize replaces a "
                "continuous latent by a code g(x_c), so name a continuous site"
            )
        _check_batch_shape(fn, msg["cond_indep_stack"], w.site)
        # The site becomes the index; the code is recorded under "<site>_code".
        msg["name"] = w.code_site
        self._in_index = True
        try:
            index = pyro.sample(w.site, UniformIndex(w.num_rows))
        finally:
            self._in_index = False
        code = w.encode(index, fn.event_shape)
        msg["fn"] = dist.Delta(code, event_dim=len(fn.event_shape)).mask(False)
        msg["value"] = code
        msg["is_observed"] = True
        msg["infer"] = dict(msg["infer"], _deterministic=True)


def _check_batch_shape(fn: Any, stack: Any, site: str) -> None:
    """Every batch dim of the site's distribution of size > 1 must be a plate dim."""
    plate_dims = {f.dim for f in stack if f.dim is not None}
    batch = tuple(fn.batch_shape)
    for i, size in enumerate(batch):
        dim = i - len(batch)
        if size != 1 and dim not in plate_dims:
            raise ValueError(
                f"the model's site {site!r} has batch shape {batch}, whose dim {dim} (size {size}) is not a "
                "plate: a per-point latent must be event-shaped (e.g. dist.Normal(loc, scale).to_event(1))"
            )


class EmpiricalizedPyroModel(nn.Module):
    """A Pyro model with its local latent site empiricalized; made by :func:`empiricalize`.

    Call it as the original model, plus the keyword ``rows``. It is an ``nn.Module`` holding
    the encoder and the ``(N, D)`` data (a buffer), registers the encoder with
    ``pyro.module`` at each call, and has a ``data`` attribute, which
    :class:`~pyro_mapa.MAPAGuide` compares with its table (a table built on other data is
    refused at the first step).

    Attributes:
        site: The empiricalized site, now the index site.
        code_site: ``site + "_code"``, the deterministic code site.
        plate: The data plate's name.
        encoder_passes: Rows pushed through the encoder so far (unique indices per call).
    """

    def __init__(self, model: Callable, site: str, encoder: nn.Module, data: Tensor, plate: str) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        for value, name in ((site, "site"), (plate, "plate")):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be the name (a non-empty str) of the model's {name}, got {value!r}")
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"encoder must be a torch.nn.Module mapping rows of data to codes, got {type(encoder).__name__}"
            )
        data = as_data_tensor(data, "data", networks={"encoder": encoder})
        if data.shape[0] < 2:
            raise ValueError(f"data has {data.shape[0]} row; MAPA needs at least 2 observations")
        self.model = model
        self.site = site
        self.code_site = f"{site}_code"
        self.plate = plate
        self.encoder = encoder
        self.register_buffer("data", data)
        self.encoder_passes = 0

    @property
    def num_rows(self) -> int:
        """``N``, the rows of ``data`` (the index site's categories)."""
        return int(self.data.shape[0])

    def codes(self, index: Tensor | None = None) -> Tensor:
        """The codes :math:`g_\\phi(x_i)` of rows ``index`` (default: all ``N``), not counted."""
        if index is not None:
            index = as_index_tensor(index, self.num_rows, "index", one_dim=False, per_step=True)
        x = self.data if index is None else self.data[index]
        return self.encoder(x)

    def encode(self, index: Tensor, event_shape: torch.Size) -> Tensor:
        """Codes for an index tensor of any shape, the encoder run once per unique index."""
        unique, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        z = call_network(self.encoder, self.data[unique], "encoder", f"a network from {self.data.shape[-1]} inputs")
        if tuple(z.shape[1:]) != tuple(event_shape):
            raise ValueError(
                f"encoder maps a row of data to shape {tuple(z.shape[1:])} but the model's site {self.site!r} "
                f"has event shape {tuple(event_shape)}; the encoder must output one code of the site's event shape"
            )
        self.encoder_passes += int(unique.shape[0])
        return z[inverse].reshape(index.shape + z.shape[1:])

    def forward(self, *args: Any, rows: Any = None, **kwargs: Any) -> Any:
        """Runs the model empiricalized; ``rows`` are the minibatch's row indices into ``data``."""
        if rows is not None:
            rows = as_index_tensor(rows, self.num_rows, "rows", device=self.data.device, per_step=True)
        pyro.module(f"{self.site}_encoder", self.encoder)
        handler = EmpiricalizeMessenger(self, rows)
        with handler:
            out = self.model(*args, **kwargs)
        if not handler.seen_site:
            raise ValueError(
                f"the model has no sample site named {self.site!r} (or never reached it); "
                "empiricalize(model, site=...) must name the model's local latent site"
            )
        return out

    def extra_repr(self) -> str:
        return f"site={self.site!r}, plate={self.plate!r}, N={self.num_rows}"


def empiricalize(
    model: Callable, site: str, encoder: nn.Module, data: Tensor, *, plate: str = "data"
) -> EmpiricalizedPyroModel:
    """Turns ``model``'s local latent ``site`` into MAPA's index site plus the code ``encoder(data[index])``.

    Arguments:
        model: A Pyro model with a continuous sample site ``site`` inside plate ``plate``.
        site: The local latent site (e.g. ``"latent"``); it becomes the index site, so the
            guide is ``MAPAGuide(table, site=site, plate=plate)``.
        encoder: ``g_φ``, maps ``(U, D)`` rows of ``data`` to ``(U,) + event_shape`` codes.
        data: ``(N, D)`` the rows the codes are amortized on (the training data, usually
            the data the table is built on).
        plate: The name of the model's data plate.

    Returns:
        An :class:`EmpiricalizedPyroModel`, called as ``model(*args, rows=rows, **kwargs)``.

    Example:
        >>> emp = empiricalize(model, "latent", encoder, X)           # doctest: +SKIP
        >>> guide = MAPAGuide(PosteriorTable.from_data(X, kernel), site="latent")
        >>> svi = SVI(emp, guide, Adam({"lr": 1e-3}), TraceMAPA_ELBO(num_top=3))
        >>> svi.step(X[rows], rows=rows)
    """
    return EmpiricalizedPyroModel(model, site, encoder, data, plate)
