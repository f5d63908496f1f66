"""One test per shim of `pyro_mapa.infer._pyro_compat`: the day Pyro moves an internal, this file says which."""

import logging
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_mapa import MeanFieldGuide, NormalLikelihood, TraceIWAE_ELBO, VAEModel, mlp
from pyro_mapa.infer import _pyro_compat as compat


def model():
    with pyro.plate("data", 5, subsample_size=2):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def guide():
    with pyro.plate("data", 5, subsample_size=2):
        pyro.sample("z", dist.Normal(torch.tensor(0.5, requires_grad=True), 1.0))


def test_site_is_subsample_and_scale_and_mask():
    trace = poutine.trace(model).get_trace()
    assert compat.site_is_subsample(trace.nodes["data"]) and not compat.site_is_subsample(trace.nodes["z"])
    lp = torch.tensor([-1.0, -2.0])
    assert torch.equal(compat.scale_and_mask(lp, 2.5, torch.tensor([True, False])), torch.tensor([-2.5, 0.0]))


def test_messenger_is_pyros_handler_base():
    class Record(compat.Messenger):
        def _pyro_sample(self, msg):
            self.names.append(msg["name"])

    rec = Record()
    rec.names = []
    with rec:
        model()
    assert "z" in rec.names


def test_get_importance_trace_and_get_traces():
    model_trace, guide_trace = compat.get_importance_trace("flat", 1, model, guide, (), {})
    assert model_trace.nodes["z"]["value"] is guide_trace.nodes["z"]["value"]
    assert model_trace.nodes["z"]["log_prob"].shape == (2,)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    (mt, gt), = list(compat.get_traces(elbo, model, guide, (), {}))
    names = {f.name for f in gt.nodes["z"]["cond_indep_stack"]}
    assert compat.VECTORIZED_PARTICLE_PLATE in names and gt.nodes["z"]["value"].shape == (3, 2)


def test_detach_distribution():
    loc = torch.tensor(1.0, requires_grad=True)
    d = compat.detach_distribution(dist.Normal(loc, 1.0))
    assert not d.loc.requires_grad and float(d.loc) == 1.0


def test_get_plates():
    seen = []

    def m():
        with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 4):
            seen.extend((f.name, f.dim) for f in compat.get_plates())
            pyro.sample("x", dist.Normal(0.0, 1.0))

    m()
    assert ("outer", -2) in seen and ("inner", -1) in seen


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_nesting_guess_drops_only_pyros_guess_line():
    assert issubclass(TraceIWAE_ELBO, compat.QuietNestingGuess)
    x = torch.randn(20, 2)
    vae, mf = VAEModel(mlp(1, 2, (4,)), x, 1, NormalLikelihood(0.1)), MeanFieldGuide(mlp(2, 2, (4,)), x, 1)
    # Pyro >= 1.9 logs the guess on "pyro.infer.elbo" (whose parent "pyro" does not propagate),
    # Pyro 1.8 on the root logger: listen on both.
    logger, root, collect = logging.getLogger("pyro.infer.elbo"), logging.getLogger(), _Collect()
    level, root_level = logger.level, root.level
    root.addHandler(collect)
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    root.setLevel(logging.INFO)
    try:
        TraceIWAE_ELBO(3).loss(vae, mf, torch.arange(5))
        assert not any("Guessed max_plate_nesting" in m for m in collect.messages)
        # Pyro's own ELBO still logs it (it guesses when vectorizing): the filter is scoped to ours.
        Trace_ELBO(num_particles=2, vectorize_particles=True).loss(vae, mf, torch.arange(5))
        assert any("Guessed max_plate_nesting" in m for m in collect.messages)
    finally:
        root.removeHandler(collect)
        logger.removeHandler(collect)
        logger.setLevel(level)
        root.setLevel(root_level)
    assert not logger.filters and not root.filters


@pytest.mark.parametrize("name", compat.__all__)
def test_every_shim_is_tested(name):
    assert f"compat.{name}" in Path(__file__).read_text()
