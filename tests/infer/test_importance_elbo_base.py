"""The per-point importance ELBOs share one base (``infer/_importance_elbo.py``): structure and exact values."""

import ast
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_mapa import NonFiniteLossError, TraceIWAE_ELBO, TraceMAPA_ELBO
from pyro_mapa.infer._importance_elbo import PerPointImportanceELBO, PerPointTerms

INFER = Path(__file__).resolve().parents[2] / "pyro_mapa" / "infer"
SIGMA = 0.7


def _imported_modules(name: str) -> set[str]:
    """The ``pyro_mapa.infer`` modules that ``infer/<name>.py`` imports (relative or absolute)."""
    out = set()
    for node in ast.walk(ast.parse((INFER / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                out.add(node.module or "")
                out.update(alias.name for alias in node.names if not node.module)
            elif (node.module or "").startswith("pyro_mapa.infer."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("pyro_mapa.infer."))
    return out


def test_both_losses_derive_from_the_base():
    assert issubclass(TraceIWAE_ELBO, PerPointImportanceELBO)
    assert issubclass(TraceMAPA_ELBO, PerPointImportanceELBO)
    for cls in (TraceIWAE_ELBO, TraceMAPA_ELBO):  # the ELBO API comes from the base, not from each file
        for method in ("loss", "loss_and_grads", "differentiable_loss", "_checked_value", "_estimate_from"):
            assert method not in vars(cls), (cls.__name__, method)


def test_neither_estimator_module_imports_the_other():
    iwae, mapa = _imported_modules("iwae_elbo"), _imported_modules("mapa_elbo")
    assert "mapa_elbo" not in iwae and "iwae_elbo" not in mapa
    assert "_importance_elbo" in iwae and "_importance_elbo" in mapa
    assert not {"iwae_elbo", "mapa_elbo"} & _imported_modules("_importance_elbo")


# ---------------------------------------------------------------- the base's reduction, by hand
class FixedTerms(PerPointImportanceELBO):
    """The base with given per-point terms (no model is run)."""

    _name = "FIXED"

    def __init__(self, terms):
        super().__init__(num_particles=1)
        self.terms = terms

    def _per_point(self, model, guide, args, kwargs, grads=False):
        return self.terms

    def _non_finite_detail(self, terms):
        return "a detail"

    def _get_trace(self, model, guide, args, kwargs):  # abstract in pyro's ELBO; unused here
        raise NotImplementedError


LOG_W = [[0.3, -1.2, 2.0], [-0.4, 0.9, 1.5]]  # (P, B) = (2, 3)


def by_hand(scale, glob, log_norm, mask):
    total = glob
    for n in range(3):
        if mask is None or mask[n]:
            total += scale * (math.log(sum(math.exp(LOG_W[p][n]) for p in range(2))) - log_norm)
    return total


@pytest.mark.parametrize("log_norm", [None, math.log(2)])
@pytest.mark.parametrize("mask", [None, [True, False, True]])
def test_the_loss_is_minus_the_per_point_estimate(log_norm, mask):
    log_w = torch.tensor(LOG_W, dtype=torch.float64, requires_grad=True)
    glob = torch.tensor(-0.25, dtype=torch.float64)
    terms = PerPointTerms(log_w, 4.0, glob, log_norm, None if mask is None else torch.tensor(mask))
    elbo = FixedTerms(terms)
    expected = by_hand(4.0, -0.25, log_norm or 0.0, mask)
    assert elbo.loss(None, None) == pytest.approx(-expected, rel=1e-14)
    assert float(elbo.differentiable_loss(None, None).detach()) == pytest.approx(-expected, rel=1e-14)
    assert elbo.loss_and_grads(None, None) == pytest.approx(-expected, rel=1e-14)
    # d(-L)/d log w_{n,p} = -s * softmax_p(log w_{., n}) for a counted point, 0 for a masked one.
    w = torch.tensor(LOG_W, dtype=torch.float64).softmax(0)
    keep = torch.ones(3) if mask is None else torch.tensor(mask, dtype=torch.float64)
    torch.testing.assert_close(log_w.grad, -4.0 * w * keep, rtol=1e-12, atol=0)


def test_without_local_terms_the_estimate_is_the_globals():
    elbo = FixedTerms(PerPointTerms(None, 3.0, -1.5, math.log(7)))
    assert elbo.loss(None, None) == 1.5


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_names_the_estimator_and_its_detail(bad):
    log_w = torch.tensor([[0.0, bad]])
    with pytest.raises(NonFiniteLossError, match=r"^the FIXED loss is (nan|-inf); a detail$"):
        FixedTerms(PerPointTerms(log_w, 1.0, 0.0)).loss(None, None)


# ---------------------------------------------------------------- IWAE with the exact posterior
def normal_normal(x, y):
    """Points z_n ~ N(0,1), x_n ~ N(z_n, SIGMA²); a global g ~ N(0,1), y ~ N(g, 1); guide = exact posterior."""
    n = len(x)

    def model(batch):
        g = pyro.sample("g", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        pyro.sample("y", dist.Normal(g, 1.0), obs=y)
        with pyro.plate("data", n, subsample=batch) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, SIGMA), obs=x[idx])

    def guide(batch):
        pyro.sample("g", dist.Normal(y / 2, math.sqrt(0.5)))
        shrink = 1 / (1 + SIGMA**2)
        with pyro.plate("data", n, subsample=batch) as idx:
            pyro.sample("z", dist.Normal(shrink * x[idx], math.sqrt(SIGMA**2 * shrink)))

    return model, guide


@pytest.mark.parametrize("num_particles", [1, 3, 17])
@pytest.mark.parametrize("batch", [None, [1, 4]])
def test_iwae_with_the_exact_posterior_is_log_p_x(num_particles, batch):
    # Every importance weight is p(x_n) (points) or p(y) (global): the bound is exact for any P,
    # log p(y) + N/|B| sum_{n in B} log p(x_n), with p(x_n) = N(0, 1 + SIGMA²), p(y) = N(0, 2).
    x = torch.tensor([0.3, -1.1, 2.0, 0.5, -0.2], dtype=torch.float64)
    y = torch.tensor(0.8, dtype=torch.float64)
    model, guide = normal_normal(x, y)
    rows = torch.arange(5) if batch is None else torch.tensor(batch)
    zero = torch.tensor(0.0, dtype=torch.float64)
    log_px = dist.Normal(zero, math.sqrt(1 + SIGMA**2)).log_prob(x[rows])
    expected = float(dist.Normal(zero, math.sqrt(2.0)).log_prob(y)) + 5 / len(rows) * float(log_px.sum())
    pyro.set_rng_seed(1)
    elbo = TraceIWAE_ELBO(num_particles)
    batch_arg = None if batch is None else torch.tensor(batch)
    assert elbo.loss(model, guide, batch_arg) == pytest.approx(-expected, rel=1e-12)
    assert elbo.loss_and_grads(model, guide, batch_arg) == pytest.approx(-expected, rel=1e-12)
