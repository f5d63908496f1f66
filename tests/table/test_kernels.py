import math

import pytest
import torch

from pyro_mapa import BernoulliKernel, GaussianKernel, ProximityKernel
from pyro_mapa.table.kernels import squared_distances


def test_squared_distances_match_cdist():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    expected = torch.cdist(x.double(), y.double()) ** 2
    torch.testing.assert_close(squared_distances(x, y).double(), expected, rtol=1e-5, atol=1e-5)
    assert (squared_distances(x, x).diagonal() >= 0).all()


def test_gaussian_kernel_closed_form():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    k = GaussianKernel(bandwidth=2.0)
    # ||x - x'||² = 25, log κ = -25 / (2·4)
    torch.testing.assert_close(k.log_kernel(x, x), torch.tensor([[0.0, -25 / 8], [-25 / 8, 0.0]]))


def test_bernoulli_kernel_equals_product_form():
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(6, 9, generator=g) > 0.5).float()
    rho = 0.8
    k = BernoulliKernel(rho)
    match = (x.unsqueeze(1) == x.unsqueeze(0)).float()
    product = (match * math.log(rho) + (1 - match) * math.log(1 - rho)).sum(-1)
    # Equal up to the per-row constant D·log ρ, which cancels in the normalized table.
    torch.testing.assert_close(k.log_kernel(x, x), product - x.shape[1] * math.log(rho))


def test_custom_kernel_subclass():
    class Laplacian(ProximityKernel):
        def log_kernel_from_sqdist(self, sqdist):
            return -sqdist.sqrt()

    k = Laplacian()
    x = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(k.log_kernel(x, x), torch.tensor([[0.0, -2.0], [-2.0, 0.0]]))
    assert k.config() == {"kernel": "Laplacian"}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_gaussian_bandwidth_must_be_positive(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        GaussianKernel(bad)


def test_gaussian_bandwidth_type():
    with pytest.raises(TypeError, match="bandwidth"):
        GaussianKernel("0.1")


@pytest.mark.parametrize("bad", [0.5, 0.3, 1.0, 1.5, -0.9])
def test_bernoulli_rho_range(bad):
    with pytest.raises(ValueError, match="rho"):
        BernoulliKernel(bad)


def test_bernoulli_rejects_non_binary_data():
    with pytest.raises(ValueError, match="binary"):
        BernoulliKernel(0.9).validate(torch.tensor([[0.0, 0.5]]))


@pytest.mark.parametrize(
    "data, exc, match",
    [
        (torch.tensor([[0.0, float("nan")]]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, "NaN or inf"),
        (torch.zeros(5), ValueError, r"shape \(N, D\)"),
        (torch.zeros(2, 2, 2), ValueError, r"shape \(N, D\)"),
        (torch.zeros(0, 2), ValueError, "at least one row"),
        (torch.zeros(3, 2, dtype=torch.long), TypeError, "floating"),
        ([[0.0, 1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_kernel_validate_rejects_bad_data(data, exc, match):
    with pytest.raises(exc, match=match):
        GaussianKernel(1.0).validate(data)


@pytest.mark.parametrize("kernel, scale", [(GaussianKernel(0.5), -2.0), (BernoulliKernel(0.8), -math.log(4.0))])  # h = 0.5: h² ≠ 2h
def test_in_place_kernel_equals_closed_form(kernel, scale):
    """The in-place map used by the table builder: log κ = scale · d² (Gaussian -1/(2h²), Bernoulli -log(ρ/(1-ρ)))."""
    d2 = torch.tensor([[0.0, 1.0, 4.0], [9.0, 25.0, 2.0]], dtype=torch.float64)
    expected = scale * d2
    torch.testing.assert_close(kernel.log_kernel_from_sqdist(d2.clone()), expected, rtol=1e-12, atol=0)
    buf = d2.clone()
    out = kernel.log_kernel_from_sqdist_(buf)
    assert out.data_ptr() == buf.data_ptr(), "the in-place map returns its argument"
    torch.testing.assert_close(buf, expected, rtol=1e-12, atol=0)


def test_kernel_flags_repr_and_binary_check():
    assert BernoulliKernel.integer_sqdist is True and GaussianKernel.integer_sqdist is False
    assert ProximityKernel.integer_sqdist is False
    assert repr(GaussianKernel(0.5)) == "GaussianKernel(bandwidth=0.5)"
    assert repr(BernoulliKernel(0.9)) == "BernoulliKernel(rho=0.9)"
    BernoulliKernel(0.9).validate(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))  # binary: accepted
    with pytest.raises(ValueError, match="needs binary data"):
        BernoulliKernel(0.9).validate(torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="needs binary data"):
        BernoulliKernel(0.9).validate(torch.tensor([[0.0, 2.0], [1.0, 1.0]]))
