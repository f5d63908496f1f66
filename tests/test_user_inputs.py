"""Inputs a new user plausibly passes: each gets a clear TypeError/ValueError naming the argument and the fix, or is converted.

One test per case of the bad-input table (docs/reliability.md's bad-input table): float64 data with
float32 networks, float/list/NumPy/negative/too large batch indices, data on the ``meta``
device, NumPy data, a table built on other data (refused without ``MAPAGuide(data=)``),
NaN/inf and wrong shapes.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_mapa import (
    AmortizedCodebook,
    EmpiricalizedModel,
    GaussianKernel,
    MAPAGuide,
    MeanFieldGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceMAPA_ELBO,
    VAEModel,
    mlp,
)

N, D = 12, 2


@pytest.fixture
def x():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1))


def small(i, o):
    return mlp(i, o, (4,))


def function_model(codebook, data):
    """The README's model: a plain function closing over the data (no ``data`` attribute)."""

    def model(batch_idx=None):
        pyro.module("codebook", codebook)
        with pyro.plate("data", len(data), subsample=batch_idx) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(len(data))))
            pyro.sample("x", dist.Normal(codebook(c), 0.3).to_event(1), obs=data[idx])

    return model


def mapa_step(model, table, batch_idx, **guide_kwargs):
    svi = SVI(model, MAPAGuide(table, "c", "data", **guide_kwargs), Adam({"lr": 1e-3}),
              loss=TraceMAPA_ELBO(num_top=N, num_samples=0))  # K = N: deterministic
    return svi.step(batch_idx)


def mapa_loss(model, table, batch_idx):
    return TraceMAPA_ELBO(num_top=N, num_samples=0).loss(model, MAPAGuide(table, "c", "data"), batch_idx)


# ---------------------------------------------------------------- float64 data, float32 networks
def test_float64_data_with_float32_networks_is_refused_at_construction(x):
    with pytest.raises(TypeError, match=r"data has dtype torch.float64 but the encoder's parameters are "
                                        r"torch.float32; pass data.float\(\).*encoder.double\(\)"):
        AmortizedCodebook(small(D, 1), small(1, D), x.double())
    with pytest.raises(TypeError, match=r"dtype torch.float64 but the decoder's.*data.float\(\)"):
        VAEModel(small(1, D), x.double(), 1, NormalLikelihood(0.3))
    with pytest.raises(TypeError, match=r"dtype torch.float64 but the encoder's.*data.float\(\)"):
        MeanFieldGuide(small(D, 2), x.double(), 1)


def test_float64_data_with_float64_networks_works(x):
    cb = AmortizedCodebook(small(D, 1).double(), small(1, D).double(), x.double())
    assert cb(torch.tensor([0, 3])).dtype == torch.float64


def test_networks_converted_after_construction_are_refused_at_first_call(x):
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    cb.encoder.double()
    with pytest.raises(TypeError, match=r"codebook.data has dtype torch.float32 but the encoder's parameters are "
                                        r"torch.float64"):
        cb(torch.tensor([0, 1]))


# ---------------------------------------------------------------- batch indices
def _vae(x):
    return VAEModel(small(1, D), x, 1, NormalLikelihood(0.3)), MeanFieldGuide(small(D, 2), x, 1)


def test_float_batch_index_is_refused_everywhere(x):
    bad = torch.tensor([0.0, 1.0])
    model, guide = _vae(x)
    emp = EmpiricalizedModel(AmortizedCodebook(small(D, 1), small(1, D), x), NormalLikelihood(0.3))
    for fn in (model, guide, emp):
        with pytest.raises(TypeError, match=r"batch_idx must hold integer row indices, got dtype torch.float32; "
                                            r"pass batch_idx.long\(\)"):
            fn(bad)
    table = PosteriorTable.from_data(x, GaussianKernel(0.3))
    with pytest.raises(TypeError, match=r"batch_idx must hold integer.*batch_idx.long\(\)"):
        mapa_step(function_model(emp.codebook, x), table, bad)  # a user's own model: refused by the table
    with pytest.raises(TypeError, match=r"batch_idx is a boolean mask; pass row indices instead"):
        model(torch.ones(N, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["list", "numpy"])
def test_list_and_numpy_batch_indices_are_converted(x, kind):
    rows = [3, 0, 7]
    given = rows if kind == "list" else np.array(rows, dtype=np.int32)
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    emp = EmpiricalizedModel(cb, NormalLikelihood(0.3))
    table = PosteriorTable.from_data(x, GaussianKernel(0.3))
    assert mapa_loss(emp, table, given) == mapa_loss(emp, table, torch.tensor(rows))
    torch.testing.assert_close(cb(given), cb(torch.tensor(rows)), rtol=0, atol=0)
    assert torch.equal(table.top_k(given, 2).indices, table.top_k(torch.tensor(rows), 2).indices)
    model, guide = _vae(x)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    pyro.set_rng_seed(3)
    converted = svi.loss(model, guide, given)
    pyro.set_rng_seed(3)
    assert converted == svi.loss(model, guide, torch.tensor(rows))
    trace = pyro.poutine.trace(model).get_trace(given)
    assert trace.nodes["data"]["value"].dtype == torch.long


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([-1, 0]), r"row indices in \[0, 12\), got values from -1 to 0 \(negative indices are refused"),
    (torch.tensor([0, 12]), r"row indices in \[0, 12\), got values from 0 to 12"),
])
def test_out_of_range_batch_index_is_refused_not_aliased(x, bad, match):
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    emp = EmpiricalizedModel(cb, NormalLikelihood(0.3))
    model, guide = _vae(x)
    for fn in (emp, model, guide):
        with pytest.raises(ValueError, match="batch_idx must hold " + match):
            fn(bad)
    with pytest.raises(ValueError, match="index must hold " + match):
        cb(bad)
    table = PosteriorTable.from_data(x, GaussianKernel(0.3))
    with pytest.raises(ValueError, match="batch_idx must hold " + match):
        mapa_step(function_model(cb, x), table, bad)  # x[-1] in the user's model would alias row 11


def test_table_shard_refuses_rows_outside_it(x):
    shard = PosteriorTable.from_data(x, GaussianKernel(0.3), rows=range(4, 8))
    assert torch.equal(shard.top_k(torch.tensor([4, 7]), 1).indices[:, 0], torch.tensor([4, 7]))
    with pytest.raises(ValueError, match=r"row indices in \[4, 8\), got values from 3 to 3"):
        shard.top_k(torch.tensor([3]), 1)  # was row 3 - 4 = -1: the shard's last row


# ---------------------------------------------------------------- meta device, NumPy data, lists
def test_meta_data_is_refused_with_a_clear_message():
    meta = torch.empty(N, D, device="meta")
    match = r"data is on the 'meta' device, which holds shapes but no values"
    with pytest.raises(ValueError, match=match):
        AmortizedCodebook(small(D, 1), small(1, D), meta)
    with pytest.raises(ValueError, match=match):
        VAEModel(small(1, D), meta, 1, NormalLikelihood(0.3))
    with pytest.raises(ValueError, match=match):
        MeanFieldGuide(small(D, 2), meta, 1)
    with pytest.raises(ValueError, match=match):
        PosteriorTable.from_data(meta, GaussianKernel(0.3))


def test_numpy_data_is_converted_to_the_networks_dtype(x):
    arr = x.double().numpy()  # NumPy's default float64
    cb = AmortizedCodebook(small(D, 1), small(1, D), arr)
    assert cb.data.dtype == torch.float32 and torch.equal(cb.data, x)
    model = VAEModel(small(1, D), arr, 1, NormalLikelihood(0.3))
    guide = MeanFieldGuide(small(D, 2), arr, 1)
    assert torch.equal(model.data, x) and torch.equal(guide.data, x)
    double = AmortizedCodebook(small(D, 1).double(), small(1, D).double(), x.numpy())
    assert double.data.dtype == torch.float64
    table = PosteriorTable.from_data(arr, GaussianKernel(0.3))  # float32, like the networks it will serve
    assert torch.equal(table.log_probs, PosteriorTable.from_data(x, GaussianKernel(0.3)).log_probs)


def test_a_list_of_rows_as_data_is_refused_naming_as_tensor(x):
    with pytest.raises(TypeError, match=r"data must be a torch.Tensor of shape \(N, D\), got list; "
                                        r"pass torch.as_tensor\(data, dtype=torch.float32\)"):
        AmortizedCodebook(small(D, 1), small(1, D), x.tolist())


# ---------------------------------------------------------------- a table built on other data
def _params(cb):
    return [p.detach().clone() for p in cb.parameters()]


def test_table_of_other_data_is_refused_at_the_first_step_without_data_argument(x):
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    before = _params(cb)
    stale = PosteriorTable.from_data(x + 0.01, GaussianKernel(0.3))  # e.g. a stale cache file
    with pytest.raises(ValueError, match=r"built on different data than the model's observed site 'x' \(data "
                                         r"fingerprint mismatch in 3 row\(s\), first: row 0\).*rebuild it with "
                                         r"PosteriorTable.from_data"):
        mapa_step(function_model(cb, x), stale, torch.tensor([0, 5, 9]))
    assert all(torch.equal(a, b) for a, b in zip(before, _params(cb)))  # refused before any update
    fresh = PosteriorTable.from_data(x, GaussianKernel(0.3))
    mapa_step(function_model(cb, x), fresh, torch.tensor([0, 5, 9]))


def test_table_of_other_data_is_refused_for_a_model_with_a_data_attribute(x):
    # Only row 11 differs and the minibatch does not hold it: model.data is compared in full.
    other = x.clone()
    other[11, 0] += 1.0
    emp = EmpiricalizedModel(AmortizedCodebook(small(D, 1), small(1, D), x), NormalLikelihood(0.3))
    stale = PosteriorTable.from_data(other, GaussianKernel(0.3))
    with pytest.raises(ValueError, match=r"model's data \(model.data\) \(data fingerprint mismatch in 1 "
                                         r"row\(s\), first: row 11\)"):
        mapa_step(emp, stale, torch.tensor([0, 1]))


def test_stale_check_accepts_the_same_data_in_float64_and_can_be_switched_off(x):
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    mapa_step(function_model(cb, x), PosteriorTable.from_data(x.double(), GaussianKernel(0.3)), torch.tensor([1]))
    stale = PosteriorTable.from_data(x.flip(0), GaussianKernel(0.3))
    mapa_step(function_model(cb, x), stale, torch.tensor([1]), check_data=False)


def test_stale_check_survives_save_and_load(tmp_path, x):
    PosteriorTable.from_data(x + 1, GaussianKernel(0.3)).save(tmp_path / "t.pt")
    loaded = PosteriorTable.load(tmp_path / "t.pt")
    assert loaded.row_shape == (D,) and loaded.row_hashes.shape == (N,)
    cb = AmortizedCodebook(small(D, 1), small(1, D), x)
    with pytest.raises(ValueError, match="data fingerprint mismatch"):
        mapa_step(function_model(cb, x), loaded, torch.tensor([2, 3]))


def test_table_without_row_hashes_falls_back_to_the_fingerprint_and_a_uniform_table_to_nothing(x):
    emp = EmpiricalizedModel(AmortizedCodebook(small(D, 1), small(1, D), x), NormalLikelihood(0.3))
    old = PosteriorTable.from_data(x + 1, GaussianKernel(0.3))
    old.row_hashes, old.row_shape = None, None  # as a file written before row hashes existed
    with pytest.raises(ValueError, match=r"model's data \(model.data\) \(data fingerprint mismatch\)"):
        mapa_step(emp, old, torch.tensor([0, 1]))
    mapa_step(emp, PosteriorTable.uniform(N), torch.tensor([0, 1]))  # MAPA-naive: built without data


def test_guide_data_argument_checks_every_row(x):
    table = PosteriorTable.from_data(x, GaussianKernel(0.3))
    MAPAGuide(table, data=x.double())  # the same values in float64
    with pytest.raises(ValueError, match=r"data passed to MAPAGuide\(data=...\) \(data fingerprint mismatch in "
                                         r"12 row\(s\)"):
        MAPAGuide(table, data=x + 1)
    with pytest.raises(ValueError, match=r"built on data of shape \(12, 2\).*has shape \(11, 2\)"):
        MAPAGuide(table, data=x[:11])


# ---------------------------------------------------------------- NaN / inf and shapes
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_data_is_refused_naming_the_row(x, value):
    bad = x.clone()
    bad[3, 1] = value
    match = r"data contains NaN or inf in 1 row\(s\) \(first: row 3\); remove or impute those rows"
    with pytest.raises(ValueError, match=match):
        AmortizedCodebook(small(D, 1), small(1, D), bad)
    with pytest.raises(ValueError, match=match):
        VAEModel(small(1, D), bad, 1, NormalLikelihood(0.3))
    with pytest.raises(ValueError, match=match):
        MeanFieldGuide(small(D, 2), bad, 1)


def test_one_dimensional_and_integer_data_are_refused(x):
    with pytest.raises(ValueError, match=r"data must have shape \(N, D\).*got shape \(12,\); for one number per "
                                         r"observation pass data.unsqueeze\(-1\)"):
        AmortizedCodebook(small(1, 1), small(1, 1), x[:, 0])
    with pytest.raises(TypeError, match=r"data must be a floating-point tensor, got dtype torch.int64; "
                                        r"pass data.float\(\)"):
        VAEModel(small(1, D), x.long(), 1, NormalLikelihood(0.3))


def test_encoder_with_d_outputs_instead_of_2d_is_refused_naming_the_fix(x):
    guide = MeanFieldGuide(small(D, 1), x, 1)  # the README's MAPA encoder mlp(D, 1) reused
    with pytest.raises(ValueError, match=r"the encoder outputs 1 numbers per point but MeanFieldGuide needs "
                                         r"2 \* latent_dim = 2 \(the location, then the pre-softplus scale\)"):
        guide(torch.tensor([0, 1]))


def test_networks_of_the_wrong_sizes_are_refused_naming_the_fix(x):
    model = VAEModel(small(2, D), x, 1, NormalLikelihood(0.3))  # decoder expects 2 latent inputs
    with pytest.raises(ValueError, match=r"the decoder cannot take inputs of shape \(2, 1\).*e.g. mlp\(1, D\)"):
        model(torch.tensor([0, 1]))
    model = VAEModel(small(1, 3), x, 1, NormalLikelihood(0.3))
    with pytest.raises(ValueError, match=r"the decoder outputs 3 numbers per point but the data has 2 columns"):
        model(torch.tensor([0, 1]))
    cb = AmortizedCodebook(small(3, 1), small(1, D), x)  # encoder for 3-D data
    with pytest.raises(ValueError, match=r"the encoder cannot take inputs of shape \(1, 2\)"):
        cb(torch.tensor([0]))
    with pytest.raises(TypeError, match=r"latent_dim must be an int"):
        VAEModel(small(1, D), x, 1.0, NormalLikelihood(0.3))


@pytest.mark.parametrize("as_type", [list, np.array])
def test_plain_function_model_takes_a_list_or_numpy_batch_under_the_mapa_elbo(as_type):
    """A user's own model passes the batch straight to pyro.plate: a list or NumPy array of rows must work."""
    import pyro.distributions as dist
    from pyro.infer import SVI
    from pyro.optim import Adam

    from pyro_mapa import AmortizedCodebook, GaussianKernel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, mlp

    x = torch.randn(30, 2)
    codebook = AmortizedCodebook(mlp(2, 1, (8,)), mlp(1, 2, (8,)), x)

    def model(batch_idx=None):
        pyro.module("codebook", codebook)
        with pyro.plate("data", len(x), subsample=batch_idx) as idx:
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(len(x))))
            pyro.sample("obs", dist.Normal(codebook(c), 0.1).to_event(1), obs=x[idx])

    loss = TraceMAPA_ELBO(2, 2)
    svi = SVI(model, MAPAGuide(PosteriorTable.from_data(x, GaussianKernel(0.1))), Adam({"lr": 1e-3}), loss)
    value = svi.step(as_type([0, 1, 2]))
    pyro.set_rng_seed(0)
    assert math.isfinite(value)
    with pytest.raises(ValueError, match="negative indices are refused"):
        svi.step(as_type([-1, 0]))
