"""AmortizedCodebook: decoder(encoder(data[index])) for any index shape, once per unique index."""

import pytest
import torch
from torch import nn

from pyro_mapa import AmortizedCodebook, mlp


def make_codebook(n=10, d_obs=3, d_lat=2, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    data = torch.randn(n, d_obs, generator=g, dtype=dtype)
    enc = mlp(d_obs, d_lat, (7,)).to(dtype)
    dec = mlp(d_lat, d_obs, (5,)).to(dtype)
    return AmortizedCodebook(enc, dec, data)


def naive(cb, index):
    """The reference: run both networks on every (possibly repeated) index, no dedup."""
    flat = index.reshape(-1)
    out = cb.decoder(cb.encoder(cb.data[flat]))
    return out.reshape(index.shape + out.shape[1:])


INDEX_CASES = [
    torch.tensor(4),  # 0-d
    torch.tensor([3, 0, 3, 9, 1]),  # 1-d with repeats
    torch.tensor([[1, 2], [2, 1], [5, 1]]),  # 2-d
    torch.tensor([[[0, 9, 9], [2, 2, 2]], [[7, 0, 5], [8, 8, 1]]]),  # 3-d
]


@pytest.mark.parametrize("index", INDEX_CASES, ids=["0d", "1d", "2d", "3d"])
def test_output_equals_naive_for_every_shape(index):
    cb = make_codebook()
    out = cb(index)
    assert out.shape == index.shape + (3,)
    ref = naive(cb, index)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=["int64", "int32", "int16", "uint8"]
)
def test_integer_dtypes_accepted(dtype):
    # forward() whitelists these four integer dtypes, so each must index like int64.
    cb = make_codebook()
    index = torch.tensor([[1, 2], [2, 1], [5, 1]])
    torch.testing.assert_close(cb(index.to(dtype)), naive(cb, index), rtol=1e-6, atol=1e-6)


def test_each_output_row_is_its_own_code_decoded():
    # Element-by-element check: out[i, j] = dec(enc(data[index[i, j]])), computed one at a time.
    cb = make_codebook()
    index = torch.tensor([[6, 0, 6], [3, 3, 9]])
    out = cb(index)
    for i in range(index.shape[0]):
        for j in range(index.shape[1]):
            row = cb.decoder(cb.encoder(cb.data[index[i, j]].unsqueeze(0)))[0]
            torch.testing.assert_close(out[i, j], row, rtol=1e-6, atol=1e-6)


def test_pass_counters_count_unique_indices_and_accumulate():
    cb = make_codebook()
    assert (cb.encoder_passes, cb.decoder_passes) == (0, 0)
    cb(torch.tensor([[1, 2], [2, 1], [5, 1]]))  # unique {1, 2, 5}
    assert (cb.encoder_passes, cb.decoder_passes) == (3, 3)
    cb(torch.tensor([7, 7, 7, 7]))  # unique {7}
    assert (cb.encoder_passes, cb.decoder_passes) == (4, 4)
    cb(torch.tensor(0))  # 0-d: one index
    assert (cb.encoder_passes, cb.decoder_passes) == (5, 5)
    cb(torch.tensor([[[0, 9, 9], [2, 2, 2]], [[7, 0, 5], [8, 8, 1]]]))  # unique {0,1,2,5,7,8,9}
    assert (cb.encoder_passes, cb.decoder_passes) == (12, 12)
    cb.reset_counts()
    assert (cb.encoder_passes, cb.decoder_passes) == (0, 0)
    cb(torch.arange(10).repeat(3))  # all 10 codes, three times each
    assert (cb.encoder_passes, cb.decoder_passes) == (10, 10)


def test_networks_really_run_once_per_unique_index():
    # Count the rows the networks actually receive, independently of the module's counters.
    cb = make_codebook()
    seen = {"enc": 0, "dec": 0}
    cb.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", seen["enc"] + i[0].shape[0]))
    cb.decoder.register_forward_hook(lambda m, i, o: seen.__setitem__("dec", seen["dec"] + i[0].shape[0]))
    cb(torch.tensor([[1, 2], [2, 1], [5, 1]]))
    assert seen == {"enc": 3, "dec": 3}


def test_codes_is_not_counted_and_matches_encoder():
    cb = make_codebook()
    torch.testing.assert_close(cb.codes(), cb.encoder(cb.data))
    idx = torch.tensor([4, 2])
    torch.testing.assert_close(cb.codes(idx), cb.encoder(cb.data[idx]))
    assert (cb.encoder_passes, cb.decoder_passes) == (0, 0)
    assert cb.num_codes == 10


def test_gradients_match_naive_computation():
    cb = make_codebook()
    index = torch.tensor([[1, 2, 2], [2, 1, 8], [5, 1, 1]])
    g = torch.Generator().manual_seed(3)
    w = torch.randn(index.shape + (3,), generator=g)

    params = list(cb.encoder.parameters()) + list(cb.decoder.parameters())
    grads = torch.autograd.grad((cb(index) * w).sum(), params)
    ref = torch.autograd.grad((naive(cb, index) * w).sum(), params)

    enc_grads = grads[: len(list(cb.encoder.parameters()))]
    dec_grads = grads[len(list(cb.encoder.parameters())) :]
    # Both networks receive a gradient, and it is not trivially zero.
    assert all(gr is not None and float(gr.abs().sum()) > 0 for gr in enc_grads)
    assert all(gr is not None and float(gr.abs().sum()) > 0 for gr in dec_grads)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_via_backward_populate_both_networks():
    cb = make_codebook()
    cb(torch.tensor([0, 3, 3])).pow(2).sum().backward()
    for p in cb.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    # data is a buffer, not a parameter: no gradient is asked of it.
    assert not cb.data.requires_grad
    assert all(p is not cb.data for p in cb.parameters())


@pytest.mark.parametrize(
    "index",
    [torch.tensor([1.0, 2.0]), torch.tensor([0.0]).double(), torch.tensor([True, False])],
    ids=["float32", "float64", "bool"],
)
def test_non_integer_index_raises_type_error(index):
    cb = make_codebook()
    with pytest.raises(TypeError):
        cb(index)
    assert (cb.encoder_passes, cb.decoder_passes) == (0, 0)


def test_data_is_a_registered_buffer():
    cb = make_codebook()
    sd = cb.state_dict()
    assert "data" in sd
    torch.testing.assert_close(sd["data"], cb.data)
    assert "data" in dict(cb.named_buffers())
    assert "data" not in dict(cb.named_parameters())


def test_to_moves_the_data_buffer():
    cb = make_codebook()
    before = cb.data.clone()
    cb.to(torch.float64)
    assert cb.data.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in cb.parameters())
    torch.testing.assert_close(cb.data, before.double())
    # Still computes correctly after the move.
    idx = torch.tensor([[1, 2], [2, 1]])
    out = cb(idx)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive(cb, idx))


def test_to_moves_the_data_buffer_across_devices():
    # The meta device exists everywhere: a device move without an accelerator.
    cb = make_codebook()
    cb.to("meta")
    assert cb.data.device.type == "meta"
    assert all(p.device.type == "meta" for p in cb.parameters())


def test_constructor_rejects_bad_data():
    enc, dec = nn.Linear(2, 1), nn.Linear(1, 2)
    with pytest.raises(ValueError):
        AmortizedCodebook(enc, dec, torch.randn(5))  # 1-D
    with pytest.raises(ValueError):
        AmortizedCodebook(enc, dec, torch.randn(0, 2))  # N = 0
