"""Index forcing on its own: a pure function for the K + S values, a handler that sets them."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mapa import AmortizedCodebook, EmpiricalizedModel, GaussianKernel, NormalLikelihood, PosteriorTable, mlp
from pyro_mapa.infer import ForceIndexMessenger, force_index, mapa_index_values

N = 12


def setup():
    torch.manual_seed(0)
    x = torch.randn(N, 2, dtype=torch.float64)
    cb = AmortizedCodebook(mlp(2, 1).double(), mlp(1, 2).double(), x)
    return x, cb, EmpiricalizedModel(cb, NormalLikelihood(0.3)), PosteriorTable.from_data(x, GaussianKernel(0.7))


def test_values_are_the_top_k_then_the_remainder_draws_with_their_corrections():
    _, _, _, table = setup()
    rows = torch.tensor([0, 5, 7])
    u = torch.rand(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64).clamp_min(1e-9)
    values, corr = mapa_index_values(table, rows, 3, 2, uniforms=u)
    again, corr2 = mapa_index_values(table, rows, 3, 2, uniforms=u)
    assert torch.equal(values, again) and torch.equal(corr, corr2)  # a pure function of its draws
    assert values.shape == (5, 3) and corr.shape == (5, 3)
    assert torch.equal(values[:3].T, table.top_k(rows, 3).indices)
    assert torch.equal(corr[:3], torch.zeros(3, 3, dtype=corr.dtype))
    rest = table.sample_remainder(rows, 3, 2, uniforms=u)
    assert torch.equal(values[3:].T, rest.indices)
    assert torch.allclose(corr[3:].T, rest.log_probs + math.log(2))
    with pytest.raises(ValueError, match="remainder must be"):
        mapa_index_values(table, rows, 1, 1, remainder="stratified")


def test_forcing_evaluates_the_model_at_each_points_top_codes():
    x, cb, model, table = setup()
    rows = torch.tensor([1, 4, 9, 10])
    values = lambda r: mapa_index_values(table, r, 3, 0)[0]  # noqa: E731
    with pyro.plate("particles", 3, dim=-2):
        tr = poutine.trace(force_index(model, "c", values, num_rows=N)).get_trace(rows)
    got = tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"])  # (3, 4)
    top = table.top_k(rows, 3).indices.T  # (3, 4)
    with torch.no_grad():
        mu = cb.decoder(cb.encoder(x))[top]  # (3, 4, 2)
    want = dist.Normal(mu, 0.3).log_prob(x[rows]).sum(-1)
    assert torch.allclose(got, want, atol=1e-12)
    assert tr.nodes["c"]["is_observed"] and torch.equal(tr.nodes["c"]["value"].reshape(3, 4), top)
    lp = tr.nodes["c"]["fn"].log_prob(tr.nodes["c"]["value"])
    assert torch.allclose(lp, torch.full_like(lp, -math.log(N)))  # the index prior is counted


def test_a_tensor_of_values_and_bad_values():
    x, _, model, table = setup()
    rows = torch.tensor([2, 3])
    fixed = torch.tensor([[0, 11]])
    tr = poutine.trace(ForceIndexMessenger("c", fixed)(model)).get_trace(rows)
    assert torch.equal(tr.nodes["c"]["value"].reshape(-1), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"values must have shape \(P, B=2\)"):
        poutine.trace(force_index(model, "c", torch.tensor([[0, 1, 2]]))).get_trace(rows)
    with pytest.raises(TypeError, match="values must be"):
        ForceIndexMessenger("c", [[0, 1]])
