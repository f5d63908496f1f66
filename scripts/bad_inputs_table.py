"""Tries every bad input of docs/reliability.md and makes its table: each case and the error it gets.

The table in docs/reliability.md sits between the markers ``<!-- generated:bad_inputs -->`` and
``<!-- /generated:bad_inputs -->`` and is exactly what this script prints
(``tests/test_bad_inputs_table.py`` checks it)::

    python scripts/bad_inputs_table.py            # print the table
    python scripts/bad_inputs_table.py --write    # splice it into docs/reliability.md
    python scripts/bad_inputs_table.py --check    # exit 1 if docs/reliability.md's table differs

Adding a case is one line in ``CASES``: ``"what is wrong": lambda s: <the call that must raise>``,
where ``s`` holds the small objects built once by :func:`setup` (data ``X``, kernel ``K``, table
``T``, an empiricalized model, a temporary folder with damaged files, and the helper models below).
Keep each case cheap (tiny data, no training loop): the test runs them all.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_mapa import (AmortizedCodebook, BernoulliKernel, EmpiricalizedModel, GaussianKernel, MAPAGuide,
                       MeanFieldGuide, NormalLikelihood, PosteriorTable, TraceInfoVAE_ELBO, TraceIWAE_ELBO,
                       TraceMAPA_ELBO, VAEModel, empiricalize, mlp)
from pyro_mapa.diagnostics import henze_zirkler
from pyro_mapa.datasets import load_dataset
from pyro_mapa.priors import GaussianCopulaPrior, KDEPrior, LearnedModel
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit, fit_libi
from pyro_mapa.training.checkpoint import load_checkpoint

__all__ = ["CASES", "DOC", "MARKER", "main", "rows", "splice", "table"]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
MARKER = re.compile(r"(<!-- generated:bad_inputs -->\n)(.*?)(<!-- /generated:bad_inputs -->)", re.S)
PYRO_SHAPES = re.compile(r"\n\s*Trace Shapes:")
HEADER = "| bad input | what it gets |\n|---|---|"
MAX_MESSAGE = 300


# -------------------------------------------------------------------------- helper models (tiny)

def _iwae_discrete(batch: Any = None) -> None:
    """A model with a Bernoulli latent (not reparameterizable) in a subsampled plate."""
    with pyro.plate("data", 10, 5):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(5))


def _iwae_discrete_guide(batch: Any = None) -> None:
    with pyro.plate("data", 10, 5):
        pyro.sample("z", dist.Bernoulli(0.3))


def _iwae_two_plates() -> None:
    with pyro.plate("a", 3):
        x0 = pyro.sample("x0", dist.Normal(0.0, 1.0))
        pyro.sample("y0", dist.Normal(x0, 1.0), obs=torch.zeros(3))
    with pyro.plate("b", 4):
        x1 = pyro.sample("x1", dist.Normal(0.0, 1.0))
        pyro.sample("y1", dist.Normal(x1, 1.0), obs=torch.zeros(4))


def _iwae_two_plates_guide() -> None:
    with pyro.plate("a", 3):
        pyro.sample("x0", dist.Normal(0.5, 1.0))
    with pyro.plate("b", 4):
        pyro.sample("x1", dist.Normal(0.5, 1.0))


def _user_model(decoder: nn.Module, where: str = "inside", discrete: bool = False,
                global_scale: bool = False) -> Callable:
    """A user's VAE model written as in Pyro's tutorial (a plate of the minibatch's size), 2-D codes."""

    def model(x: torch.Tensor) -> None:
        pyro.module("decoder", decoder)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.5)) if global_scale else 0.5
        if where == "outside":
            z = pyro.sample("latent", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            if discrete:
                c = pyro.sample("latent", dist.Categorical(logits=torch.zeros(3)))
                z = c.float().unsqueeze(-1).expand(-1, 2)
            elif where == "inside":
                z = pyro.sample("latent", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(decoder(z), sigma).to_event(1), obs=x)

    return model


def _empiricalized_loss(s: SimpleNamespace, site: str = "latent", rows: Any = "default", batch: int = 4,
                        encoder: nn.Module | None = None, **model_kw: Any) -> float:
    """One TraceMAPA_ELBO loss of the user's model empiricalized on ``s.X`` (2-D codes)."""
    emp = empiricalize(_user_model(mlp(2, 2, (4,)), **model_kw), site, encoder or mlp(2, 2, (4,)), s.X)
    rows = torch.arange(4) if isinstance(rows, str) else rows
    return TraceMAPA_ELBO(num_top=2).loss(emp, MAPAGuide(s.T, site=site), s.X[:batch], rows=rows)


def _decoder_turns_nan(s: SimpleNamespace) -> None:
    """One epoch of ``fit`` with a decoder whose first weight is NaN (validation off, as a long run may have it)."""
    codebook = AmortizedCodebook(mlp(2, 1, (4,)), mlp(1, 2, (4,)), s.X)
    with torch.no_grad():
        next(codebook.decoder.parameters()).fill_(float("nan"))
    model = EmpiricalizedModel(codebook, NormalLikelihood(0.5))
    pyro.enable_validation(False)
    fit(model, MAPAGuide(s.T), TraceMAPA_ELBO(1, 1), len(s.X), epochs=1, progress=False)


def _vae(s: SimpleNamespace) -> tuple:
    """A tiny VAE (model, guide, loss) on ``s.X``."""
    return VAEModel(mlp(1, 2, (4,)), s.X, 1, NormalLikelihood(0.5)), MeanFieldGuide(mlp(2, 2, (4,)), s.X, 1), Trace_ELBO()


def setup(folder: str) -> SimpleNamespace:
    """The shared small objects of the cases; damaged files are written into ``folder``."""
    torch.manual_seed(0)
    X = torch.randn(20, 2)
    K = GaussianKernel(0.5)
    T = PosteriorTable.from_data(X, K)
    model = EmpiricalizedModel(AmortizedCodebook(mlp(2, 1), mlp(1, 2), X), NormalLikelihood(0.5))
    path = Path(folder)
    T.save(path / "t.pt")
    raw = (path / "t.pt").read_bytes()
    (path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    payload = torch.load(path / "t.pt", weights_only=True)
    payload["log_probs"] += 1
    torch.save(payload, path / "tam.pt")
    torch.save({"format": "x"}, path / "c.ckpt")
    return SimpleNamespace(X=X, K=K, T=T, model=model, dir=path)


# -------------------------------------------------------------------------- the cases, in table order

CASES: dict[str, Callable[[SimpleNamespace], Any]] = {
    "data with NaN": lambda s: PosteriorTable.from_data(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), s.K),
    "data with inf": lambda s: PosteriorTable.from_data(torch.tensor([[0.0, float("inf")], [1.0, 1.0]]), s.K),
    "1-D data": lambda s: PosteriorTable.from_data(torch.zeros(5), s.K),
    "integer data": lambda s: PosteriorTable.from_data(torch.zeros(5, 2, dtype=torch.long), s.K),
    "empty data": lambda s: PosteriorTable.from_data(torch.zeros(0, 2), s.K),
    "N = 1": lambda s: PosteriorTable.from_data(torch.zeros(1, 2), s.K),
    "bandwidth = 0": lambda s: GaussianKernel(0.0),
    "bandwidth = -1": lambda s: GaussianKernel(-1.0),
    "rho = 0.5": lambda s: BernoulliKernel(0.5),
    "rho = 1.2": lambda s: BernoulliKernel(1.2),
    "non-binary data, Bernoulli kernel": lambda s: PosteriorTable.from_data(torch.rand(5, 3), BernoulliKernel(0.9)),
    "K < 0": lambda s: TraceMAPA_ELBO(-1, 0),
    "S < 0": lambda s: TraceMAPA_ELBO(1, -1),
    "K = S = 0": lambda s: TraceMAPA_ELBO(0, 0),
    "K > N": lambda s: TraceMAPA_ELBO(21, 0).loss(s.model, MAPAGuide(s.T)),
    "K > max_support": lambda s: TraceMAPA_ELBO(5, 0).loss(
        s.model, MAPAGuide(PosteriorTable.from_data(s.X, s.K, max_support=3))),
    "max_support = 0": lambda s: PosteriorTable.from_data(s.X, s.K, max_support=0),
    "index site of another support size": lambda s: TraceMAPA_ELBO(1).loss(
        s.model, MAPAGuide(PosteriorTable.from_data(torch.randn(25, 2), s.K))),
    "guide names a missing site": lambda s: TraceMAPA_ELBO(1).loss(s.model, MAPAGuide(s.T, site="z")),
    "guide names another plate": lambda s: TraceMAPA_ELBO(1).loss(s.model, MAPAGuide(s.T, plate="batch")),
    "table built on other data": lambda s: MAPAGuide(s.T, data=s.X + 1),
    "guide that is not a MAPAGuide": lambda s: TraceMAPA_ELBO(1).loss(s.model, lambda *a: None),
    "remainder option unknown": lambda s: TraceMAPA_ELBO(1, 1, remainder="stratified"),
    "IWAE num_particles = 0": lambda s: TraceIWAE_ELBO(0),
    "IWAE num_particles = -3": lambda s: TraceIWAE_ELBO(-3),
    "IWAE plate not a str": lambda s: TraceIWAE_ELBO(3, plate=1),
    "IWAE non-reparameterized guide site": lambda s: TraceIWAE_ELBO(3).loss(_iwae_discrete, _iwae_discrete_guide),
    "IWAE latent sites in two unrelated plates": lambda s: TraceIWAE_ELBO(3).loss(
        _iwae_two_plates, _iwae_two_plates_guide),
    "empiricalize: a site the model lacks": lambda s: _empiricalized_loss(s, site="z"),
    "empiricalize: a site outside the plate": lambda s: _empiricalized_loss(s, where="outside"),
    "empiricalize: a discrete site": lambda s: _empiricalized_loss(s, discrete=True),
    "empiricalize: rows missing for a minibatch plate": lambda s: _empiricalized_loss(s, rows=None),
    "empiricalize: rows of another length than the plate": lambda s: _empiricalized_loss(s, rows=torch.arange(3)),
    "empiricalize: encoder of the wrong output size": lambda s: _empiricalized_loss(s, encoder=nn.Linear(2, 3)),
    "empiricalize: a global latent without a guide": lambda s: _empiricalized_loss(s, global_scale=True),
    "device = 'meta'": lambda s: PosteriorTable.from_data(s.X, s.K, device="meta"),
    "from_log_probs with max_support > N": lambda s: PosteriorTable.from_log_probs(torch.zeros(4, 4), max_support=5),
    "cache_dir is a file": lambda s: PosteriorTable.cached(s.X, s.K, s.dir / "t.pt"),
    "save to a directory": lambda s: s.T.save(s.dir),
    "remainder uniforms outside (0, 1]": lambda s: s.T.sample_remainder(
        torch.arange(2), 1, 2, uniforms=torch.full((2, 2), -1.0)),
    "codes on a line (KDE prior)": lambda s: KDEPrior(torch.cat([s.X[:, :1], 2 * s.X[:, :1]], 1)),
    "a constant code dimension (KDE prior)": lambda s: KDEPrior(torch.cat([s.X[:, :1], torch.ones(20, 1)], 1)),
    "copula prior of 2-D codes": lambda s: GaussianCopulaPrior(s.X),
    "Henze-Zirkler statistic of one row": lambda s: henze_zirkler(torch.zeros(1, 2)),
    "Henze-Zirkler statistic of collinear codes": lambda s: henze_zirkler(torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])),
    "Henze-Zirkler beta = 0": lambda s: henze_zirkler(s.X, beta=0.0),
    "a data set name that does not exist": lambda s: load_dataset("figure9"),
    "LiBI rounds = 0": lambda s: fit_libi(mlp(1, 2), s.X, NormalLikelihood(0.5), 1, rounds=0),
    "LiBI Henze-Zirkler weight = 0": lambda s: fit_libi(mlp(1, 2), s.X, NormalLikelihood(0.5), 1, hz_weight=0.0),
    "LiBI code network of another output size": lambda s: fit_libi(
        mlp(1, 2), s.X, NormalLikelihood(0.5), 1, code_network=mlp(2, 2)),
    "decoder turns NaN during training": _decoder_turns_nan,
    "fit: num_points differs from the model's data": lambda s: fit(
        *_vae(s), num_points=10, epochs=1, progress=False),
    "fit: lr = 0": lambda s: fit(*_vae(s), epochs=1, lr=0.0, progress=False),
    "fit: seed not an int": lambda s: fit(*_vae(s), epochs=1, seed=1.5, progress=False),
    "fit: num_threads = 0": lambda s: fit(*_vae(s), epochs=1, num_threads=0, progress=False),
    "VAE guide built on other data": lambda s: fit(
        VAEModel(mlp(1, 2, (4,)), s.X, 1, NormalLikelihood(0.5)), MeanFieldGuide(mlp(2, 2, (4,)), s.X + 1, 1),
        Trace_ELBO(), epochs=1, progress=False),
    "decoder input size differs from latent_dim": lambda s: LearnedModel(mlp(3, 2), NormalLikelihood(0.5), latent_dim=2),
    "test points with another number of columns": lambda s: LearnedModel(
        mlp(1, 2), NormalLikelihood(0.5)).log_prob(torch.zeros(3, 3)),
    "test point with NaN": lambda s: LearnedModel(mlp(1, 2), NormalLikelihood(0.5)).log_prob(
        torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])),
    "latent_dim = 0": lambda s: build_method("MAPA", s.X, NormalLikelihood(0.5), latent_dim=0),
    "noise scale with unequal values": lambda s: NormalLikelihood(torch.tensor([0.05, 0.1])),
    "InfoVAE alpha > 1": lambda s: TraceInfoVAE_ELBO(alpha=2.0, lambda_=1.0),
    "InfoVAE lambda_ = 0": lambda s: TraceInfoVAE_ELBO(lambda_=0.0),
    "smoothed codes: tau < 0": lambda s: AmortizedCodebook(mlp(2, 1), mlp(1, 2), s.X, tau=-0.5),
    "smoothed codes asked of a method without learned codes": lambda s: build_method(
        "MAPA-naive", s.X, NormalLikelihood(0.5), options={"tau": 0.5}),
    "truncated table file": lambda s: PosteriorTable.load(s.dir / "cut.pt"),
    "altered table file": lambda s: PosteriorTable.load(s.dir / "tam.pt"),
    "foreign checkpoint": lambda s: load_checkpoint(s.dir / "c.ckpt"),
}


def _cell(error: BaseException | None, folder: str) -> str:
    if error is None:
        return "(no error)"
    msg = PYRO_SHAPES.split(str(error))[0]  # Pyro appends the trace's shapes to errors raised inside a model
    msg = msg.replace(folder, "<dir>").replace("\n", " ").replace("|", "\\|")
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 3] + "..."
    return f"`{type(error).__name__}`: {msg}"


def rows(cases: dict[str, Callable[[SimpleNamespace], Any]] | None = None) -> list[str]:
    """Runs each case (seeded, warnings ignored, Pyro's validation and param store restored) and returns its row."""
    cases = CASES if cases is None else cases
    store = pyro.get_param_store().get_state()
    out = []
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), pyro.validation_enabled(True):
            warnings.simplefilter("ignore")
            shared = setup(folder)
            for name, case in cases.items():
                pyro.clear_param_store()
                pyro.enable_validation(True)
                pyro.set_rng_seed(0)
                error = None
                try:
                    case(shared)
                except Exception as e:  # noqa: BLE001 - the error is the row's content
                    error = e
                out.append(f"| {name} | {_cell(error, folder)} |")
    finally:
        pyro.clear_param_store()  # set_state adds to the store; clear it first
        pyro.get_param_store().set_state(store)
    return out


def table(cases: dict[str, Callable[[SimpleNamespace], Any]] | None = None) -> str:
    """The Markdown table: header and one row per case."""
    return HEADER + "\n" + "\n".join(rows(cases))


def splice(text: str, new_table: str) -> str:
    """``text`` with the table between the bad-input markers replaced by ``new_table``.

    Raises:
        ValueError: if ``text`` does not hold the markers exactly once.
    """
    if len(MARKER.findall(text)) != 1:
        raise ValueError("the text must hold the markers <!-- generated:bad_inputs --> ... "
                         "<!-- /generated:bad_inputs --> exactly once")
    return MARKER.sub(lambda m: f"{m.group(1)}\n{new_table}\n\n{m.group(3)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"splice the table into {DOC.relative_to(ROOT)}")
    group.add_argument("--check", action="store_true", help="exit 1 if the documented table differs")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file holding the markers")
    args = parser.parse_args(argv)
    new = table()
    if not (args.write or args.check):
        print(new)
        return 0
    text = args.doc.read_text()
    spliced = splice(text, new)
    if args.check:
        same = spliced == text
        print(f"{args.doc}: bad-input table {'up to date' if same else 'differs; run with --write'}")
        return 0 if same else 1
    args.doc.write_text(spliced)
    print(f"{args.doc}: bad-input table written ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
