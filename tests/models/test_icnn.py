"""ICNN and BrenierMap: convexity, strong monotonicity, gradients against finite differences and autograd."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian

from pyro_mapa.models.icnn import ICNN, BrenierMap

ACTS = ["softplus", "leaky_relu"]


def _reference_potential(icnn: ICNN, y: torch.Tensor, constrain: bool = True) -> torch.Tensor:
    """The ICNN formula written out from the module's raw parameters; ``constrain=False`` skips softplus."""
    nonneg = F.softplus if constrain else (lambda w: w)
    sigma = F.softplus if icnn.activation == "softplus" else (lambda a: F.leaky_relu(a, 0.01))
    h = sigma(y @ icnn.input_layers[0].weight.T + icnn.input_layers[0].bias)
    for layer, raw in zip(icnn.input_layers[1:], icnn.raw_hidden_weights):
        h = sigma(h @ nonneg(raw).T + y @ layer.weight.T + layer.bias)
    return h @ nonneg(icnn.raw_output_weight) + y @ icnn.output_linear


def _scramble(module: torch.nn.Module, seed: int = 1) -> None:
    """Large random parameters, with every raw non-negative weight set strongly negative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if "raw_" in name and "singular" not in name:
                p.copy_(-p.abs() - 1.0)  # softplus(raw) in (0, 0.32): still >= 0 after the reparameterisation


def _icnn(activation, scrambled, dim=3, hidden=(8, 8)):
    torch.manual_seed(0)
    net = ICNN(dim, hidden, activation).double()
    if scrambled:
        _scramble(net)
    return net


@pytest.mark.parametrize("activation", ACTS)
def test_forward_matches_formula(activation):
    net = _icnn(activation, scrambled=True)
    y = torch.randn(4, 5, 3, dtype=torch.float64)
    out = net(y)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, _reference_potential(net, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scrambled", [False, True])
def test_hessian_is_psd_softplus(scrambled):
    net = _icnn("softplus", scrambled)
    ys = 3.0 * torch.randn(40, 3, dtype=torch.float64)
    mins = torch.stack([torch.linalg.eigvalsh(hessian(net, y)).min() for y in ys])
    assert mins.min() >= -1e-6
    assert mins.max() > 1e-4  # softplus makes f curved: the check is not vacuous


@pytest.mark.parametrize("scrambled", [False, True])
def test_second_differences_are_non_negative_leaky_relu(scrambled):
    """Convexity of the piecewise-linear potential along random lines: f(y + tv) - 2 f(y) + f(y - tv) >= 0.

    Its autograd Hessian is zero almost everywhere, so a Hessian check cannot fail; finite second
    differences over steps that cross the kinks can. Steps t are log-uniform on [1e-4, 2]: short ones
    cross at most one kink, so a single concave kink shows (a slope above 1, e.g. the mutant
    0.01 -> 1.01, or a slope of -1, gives negative ones); long ones cross many.
    """
    net = _icnn("leaky_relu", scrambled)
    g = torch.Generator().manual_seed(2)
    n = 20000
    y = 3.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    t = torch.exp(torch.empty(n, 1, dtype=torch.float64).uniform_(math.log(1e-4), math.log(2.0), generator=g))
    with torch.no_grad():
        second = net(y + t * v) - 2 * net(y) + net(y - t * v)
        scale = net(y).abs().max()
    assert second.min() >= -1e-12 * scale
    assert second.max() > 1e-3 * scale  # kinks make f curved on these segments: the check is not vacuous


def test_unconstrained_network_is_not_convex():
    """Positive control: the same raw weights without the softplus give a negative Hessian eigenvalue."""
    net = _icnn("softplus", scrambled=True)
    ys = 3.0 * torch.randn(40, 3, dtype=torch.float64)
    mins = torch.stack(
        [
            torch.linalg.eigvalsh(hessian(lambda v: _reference_potential(net, v, constrain=False), y)).min()
            for y in ys
        ]
    )
    assert mins.min() < -1e-2


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("scrambled", [False, True])
def test_midpoint_convexity(activation, scrambled):
    net = _icnn(activation, scrambled)
    a, b = 3.0 * torch.randn(2, 4000, 3, dtype=torch.float64)
    lam = torch.rand(4000, 1, dtype=torch.float64)
    gap = lam[:, 0] * net(a) + (1 - lam[:, 0]) * net(b) - net(lam * a + (1 - lam) * b)
    assert gap.min() >= -1e-9


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("scrambled", [False, True])
def test_strong_monotonicity(activation, scrambled):
    torch.manual_seed(0)
    g = BrenierMap(3, (8, 8), strength=0.3, activation=activation).double()
    if scrambled:
        _scramble(g)
    a = 3.0 * torch.randn(4000, 3, dtype=torch.float64)
    b = torch.cat(
        [3.0 * torch.randn(2000, 3, dtype=torch.float64), a[2000:] + 1e-3 * torch.randn(2000, 3).double()]
    )
    diff = a - b
    inner = ((g(a) - g(b)) * diff).sum(-1)
    bound = 0.3 * diff.pow(2).sum(-1)
    assert (inner - bound).min() >= -1e-9 * bound.max()
    # injective: ||g(a) - g(b)|| >= c ||a - b|| > 0 for distinct inputs
    dist_out = (g(a) - g(b)).norm(dim=-1)
    assert (dist_out >= 0.3 * diff.norm(dim=-1) * (1 - 1e-9)).all()
    assert dist_out.min() > 0


@pytest.mark.parametrize("activation", ACTS)
def test_gradient_matches_finite_differences(activation):
    torch.manual_seed(0)
    g = BrenierMap(3, (8, 8), strength=0.5, activation=activation).double()
    _scramble(g)
    y = torch.randn(6, 3, dtype=torch.float64)
    eps = 1e-6
    fd = torch.stack(
        [
            (g.potential(y + eps * e) - g.potential(y - eps * e)) / (2 * eps)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        dim=-1,
    )
    torch.testing.assert_close(g(y), fd + 0.5 * y, rtol=1e-6, atol=1e-7)


def test_jacobian_is_hessian_plus_c_identity():
    """d g / d y, back-propagated through the create_graph=True gradient, is Hess f + c I (symmetric)."""
    torch.manual_seed(0)
    g = BrenierMap(3, (8, 8), strength=0.5).double()
    _scramble(g)
    y = torch.randn(3, dtype=torch.float64)
    jac = jacobian(g, y)
    torch.testing.assert_close(jac, hessian(g.potential, y) + 0.5 * torch.eye(3, dtype=torch.float64))
    assert torch.linalg.eigvalsh(jac).min() >= 0.5 - 1e-9


def test_any_batch_shape_is_row_wise():
    torch.manual_seed(0)
    g = BrenierMap(2, (8,)).double()
    y = torch.randn(3, 4, 5, 2, dtype=torch.float64)
    out = g(y)
    assert out.shape == y.shape
    torch.testing.assert_close(out[1, 2, 3], g(y[1, 2, 3]))
    torch.testing.assert_close(out.reshape(-1, 2), g(y.reshape(-1, 2)))


def test_parameters_get_gradients_matching_finite_differences():
    torch.manual_seed(0)
    g = BrenierMap(2, (6, 6), strength=0.2).double()
    y = torch.randn(10, 2, dtype=torch.float64)
    target = torch.randn(10, 2, dtype=torch.float64)

    def loss():
        return (g(y) - target).pow(2).sum()

    loss().backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        idx = (0,) * p.dim()
        with torch.no_grad():
            p[idx] += 1e-6
            up = loss()
            p[idx] -= 2e-6
            down = loss()
            p[idx] += 1e-6
        torch.testing.assert_close(p.grad[idx], (up - down) / 2e-6, rtol=1e-5, atol=1e-7, msg=name)


def test_input_gradient_when_input_requires_grad():
    torch.manual_seed(0)
    g = BrenierMap(2, (6,), strength=0.2).double()
    y = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(g(y).sum(), y)
    expected = torch.stack([jacobian(g, row).sum(0) for row in y.detach()])
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_runs_without_gradients(mode):
    torch.manual_seed(0)
    g = BrenierMap(2, (6,), strength=0.2)
    y = torch.randn(7, 2)
    expected = g(y).detach()
    with mode():
        out = g(y)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)
    assert all(p.grad is None for p in g.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        ICNN(0)
    with pytest.raises(TypeError, match="dim must be an int"):
        ICNN(2.0)
    with pytest.raises(ValueError, match="hidden must be a non-empty sequence"):
        ICNN(2, ())
    with pytest.raises(ValueError, match="hidden must be a non-empty sequence"):
        ICNN(2, 5)
    with pytest.raises(ValueError, match=r"hidden\[i\] must be >= 1"):
        ICNN(2, (4, 0))
    with pytest.raises(ValueError, match="activation must be one of"):
        ICNN(2, activation="relu6")
    for c in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            BrenierMap(2, strength=c)
    g = BrenierMap(2, (4,))
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., 2\)"):
        g(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="floating-point"):
        g(torch.zeros(5, 2, dtype=torch.long))
