"""Reading something that is not a table file says what was found and what was expected."""

import numpy as np
import pytest
import torch

from pyro_mapa import GaussianKernel, PosteriorTable


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.write_bytes(b""), "is empty, not a file written by PosteriorTable.save"),
        (lambda p: p.write_text("hello"), r"is not a zip archive \(it starts with b'hello'\)"),
        (lambda p: torch.save({"a": 1}, p), r"holds a dict with keys \['a'\], not a file written by PosteriorTable.save"),
        (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not a file written by PosteriorTable.save"),
        (lambda p: torch.save({"meta": "{not json"}, p), "has an unreadable 'meta' entry"),
    ],
)
def test_foreign_files_are_named(tmp_path, write, match):
    path = tmp_path / "x.pt"
    write(path)
    with pytest.raises(ValueError, match=match):
        PosteriorTable.load(path)


def test_a_real_table_still_loads(tmp_path):
    t = PosteriorTable.from_data(torch.randn(6, 2), GaussianKernel(0.5))
    t.save(tmp_path / "t.pt")
    u = PosteriorTable.load(tmp_path / "t.pt")
    assert torch.equal(u.indices, t.indices) and torch.equal(u.log_probs, t.log_probs)


@pytest.mark.parametrize("value", [torch.tensor(0.05), torch.tensor([0.05]), np.float64(0.05), np.array(0.05)])
def test_bandwidth_as_a_one_element_tensor_or_array(value):
    assert GaussianKernel(value).bandwidth == pytest.approx(0.05)


@pytest.mark.parametrize("value", [torch.tensor([0.05, 0.1]), torch.tensor(True), "0.05", np.array([0.1, 0.2])])
def test_bandwidth_of_another_kind_is_refused(value):
    with pytest.raises(TypeError, match="bandwidth must be a float"):
        GaussianKernel(value)
