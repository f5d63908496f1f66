"""Per-step index checks run under Pyro's validation flag, as Pyro's own argument checks do.

With ``pyro.enable_validation(True)`` (Pyro's default) an out-of-range minibatch index reaching a model,
guide or handler is refused with the message of docs/reliability.md; with validation off the range check
(a host sync on an accelerator) is skipped, while type and shape checks still run.
"""

import pyro
import pytest
import torch

from pyro_mapa import AmortizedCodebook, mlp
from pyro_mapa.errors import as_index_tensor


@pytest.fixture
def validation():
    before = pyro.infer.is_validation_enabled()
    yield pyro.enable_validation
    pyro.enable_validation(before)


def test_range_check_follows_pyro_validation(validation):
    bad = torch.tensor([0, 7])
    validation(True)
    with pytest.raises(ValueError, match=r"batch_idx must hold row indices in \[0, 5\)"):
        as_index_tensor(bad, 5, per_step=True)
    validation(False)
    assert torch.equal(as_index_tensor(bad, 5, per_step=True), bad)  # no range check, no host sync
    with pytest.raises(ValueError, match=r"must hold row indices in \[0, 5\)"):
        as_index_tensor(bad, 5)  # a check at a boundary (not per step) always runs
    with pytest.raises(TypeError, match="pass batch_idx.long()"):
        as_index_tensor(bad.float(), 5, per_step=True)  # type checks cost no sync: always on


def test_codebook_step_check_follows_pyro_validation(validation):
    torch.manual_seed(0)
    data = torch.randn(6, 2)
    book = AmortizedCodebook(mlp(2, 1, (4,)), mlp(1, 2, (4,)), data)
    validation(True)
    with pytest.raises(ValueError, match=r"index must hold row indices in \[0, 6\)"):
        book.codes(torch.tensor([6]))
    validation(False)
    with pytest.raises(IndexError):  # torch's own bounds check on CPU still stops it
        book.codes(torch.tensor([6]))
    assert torch.equal(book.codes(torch.tensor([5])), book.codes()[5:])
