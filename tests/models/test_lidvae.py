"""LIDVAEDecoder: injectivity bound, full-rank beta, gradient flow, no_grad, and training with ELBO, IWAE and MAPA."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_mapa import (
    AmortizedCodebook,
    EmpiricalizedModel,
    MAPAGuide,
    MeanFieldGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    VAEModel,
    mlp,
    quadrature_log_likelihood,
)
from pyro_mapa.models.lidvae import FullRankLinear, LIDVAEDecoder, orthonormal_columns


def _scramble(module: torch.nn.Module, seed: int = 1) -> None:
    """Large random ICNN parameters (raw non-negative weights strongly negative), beta left as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("beta."):
                continue
            p.copy_(2.0 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if "raw_" in name:
                p.copy_(-p.abs() - 1.0)


def _decoder(d, D, seed=0, singular=None, **kw):
    """A float64 decoder with large random ICNN parameters and, optionally, beta's singular values set."""
    torch.manual_seed(seed)
    dec = LIDVAEDecoder(d, D, hidden=(8, 8), **kw).double()
    _scramble(dec, seed + 1)
    if singular is not None:  # set s exactly through the inverse of the log-sigmoid map
        low, high = dec.beta.low, dec.beta.high
        frac = torch.log(torch.tensor(singular, dtype=torch.float64) / low) / math.log(high / low)
        with torch.no_grad():
            dec.beta.raw_singular_values.copy_(torch.logit(frac))
    return dec


def _curve():
    t = torch.linspace(-2.5, 2.5, 32)
    return torch.stack([t, t.abs()], -1) + 0.05 * torch.randn(32, 2)


def test_shapes_dtype_and_beta_matrix():
    dec = _decoder(2, 5, singular=[0.05, 3.0])
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    out = dec(z)
    assert out.shape == (4, 3, 5) and out.dtype == torch.float64
    beta = dec.beta.weight
    torch.testing.assert_close(torch.linalg.svdvals(beta), torch.tensor([3.0, 0.05], dtype=torch.float64))
    torch.testing.assert_close(dec.g2(dec.beta(dec.g1(z))), out)
    u, v, s = dec.beta.u(), dec.beta.v(), dec.beta.singular_values()  # beta = U diag(s) V^T, orthonormal U, V
    torch.testing.assert_close(u.T @ u, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(v.T @ v, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(beta, u @ torch.diag(s) @ v.T)


@pytest.mark.parametrize("d, D, singular", [(2, 5, [0.05, 3.0]), (1, 3, [0.2]), (3, 3, [0.1, 1.0, 8.0])])
def test_injectivity_lower_bound(d, D, singular):
    """||f(a) - f(b)|| >= c1 * s_min(beta) * c2 * ||a - b|| on far and near pairs."""
    dec = _decoder(d, D, singular=singular, strength=0.3)
    kappa = dec.injectivity_constant()
    torch.testing.assert_close(kappa, torch.tensor(0.09 * min(singular), dtype=torch.float64))
    a = 2.0 * torch.randn(3000, d, dtype=torch.float64)
    b = torch.cat([2.0 * torch.randn(1500, d).double(), a[1500:] + 1e-3 * torch.randn(1500, d).double()])
    ratio = (dec(a) - dec(b)).norm(dim=-1) / (a - b).norm(dim=-1)
    assert ratio.min() >= kappa * (1 - 1e-9)
    assert ratio.min() > 0  # distinct codes decode to distinct means


def test_d1_curve_is_monotone_along_beta_and_never_self_intersects():
    """With d = 1, beta = s u: <f(t) - f(r), u> >= c1 c2 s (t - r) for t > r, so the curve cannot return."""
    dec = _decoder(1, 2, strength=0.3, singular=[0.5])
    t = torch.linspace(-4, 4, 200, dtype=torch.float64)[:, None]
    curve = dec(t)
    u = dec.beta.weight[:, 0] / dec.beta.weight[:, 0].norm()
    slope = torch.diff(curve @ u) / torch.diff(t[:, 0])
    kappa = 0.3 * 0.3 * 0.5
    assert slope.min() >= kappa * (1 - 1e-9)
    dist = torch.cdist(curve, curve)
    gap = (t - t.T).abs()
    far = gap > 1.5 * (t[1, 0] - t[0, 0])  # non-neighbouring grid nodes
    assert (dist[far] >= kappa * gap[far] * (1 - 1e-9)).all()
    assert dist[far].min() >= 2 * kappa * (t[1, 0] - t[0, 0]) * (1 - 1e-9)
    # not vacuous: the curve bends (not a straight line), and the slope bound is nearly attained
    spread = torch.linalg.svdvals(curve - curve.mean(0))
    assert spread[-1] > 0.02 * spread[0]
    assert slope.min() < 2 * kappa


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_beta_singular_values_stay_in_range_after_a_pushing_step(direction):
    dec = _decoder(2, 4, beta_singular_range=(1e-3, 5.0))
    opt = torch.optim.SGD(dec.parameters(), lr=1e4)
    for _ in range(2):
        opt.zero_grad()
        loss = -direction * dec.beta.weight.pow(2).sum()  # +1: pushes s up, -1: pushes s down
        loss.backward()
        opt.step()
    s = torch.linalg.svdvals(dec.beta.weight)
    assert (s >= 1e-3 * (1 - 1e-9)).all() and (s <= 5.0 * (1 + 1e-9)).all()
    edge = 5.0 if direction > 0 else 1e-3
    torch.testing.assert_close(
        s, torch.full_like(s, edge), rtol=1e-3, atol=0.0
    )  # the push did reach the edge
    u = dec.beta.u()
    torch.testing.assert_close(u.T @ u, torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(5, 2), (3, 3), (4, 1)])
@pytest.mark.parametrize("fill", ["zeros", "random", "huge", "decayed"])
def test_orthonormal_columns_for_any_raw_matrix(shape, fill):
    """Any real raw matrix (a zero init, weight decay towards 0, huge steps) gives orthonormal columns."""
    g = torch.Generator().manual_seed(0)
    raw = {
        "zeros": torch.zeros(shape, dtype=torch.float64),
        "random": torch.randn(shape, generator=g, dtype=torch.float64),
        "huge": 1e4 * torch.randn(shape, generator=g, dtype=torch.float64),
        "decayed": 0.3 * torch.eye(*shape, dtype=torch.float64)
        + 0.01 * torch.randn(shape, generator=g).double(),
    }[fill]
    q = orthonormal_columns(raw)
    assert q.shape == shape
    torch.testing.assert_close(q.T @ q, torch.eye(shape[1], dtype=torch.float64), rtol=0, atol=1e-12)


def test_parameters_alone_determine_the_decoder():
    """Copying named_parameters (what a Pyro param-store checkpoint restores) reproduces the outputs."""
    torch.manual_seed(0)
    a = LIDVAEDecoder(2, 4, hidden=(6,))
    torch.manual_seed(1)
    b = LIDVAEDecoder(2, 4, hidden=(6,))
    z = torch.randn(5, 2)
    assert not torch.allclose(a(z), b(z))
    with torch.no_grad():
        for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            q.copy_(p)
    torch.testing.assert_close(b(z), a(z), rtol=0, atol=0)


@pytest.mark.parametrize("d, D", [(2, 3), (1, 2), (1, 1)])
def test_every_parameter_gets_a_gradient(d, D):
    torch.manual_seed(0)
    dec = LIDVAEDecoder(d, D, hidden=(6, 6))
    z = torch.randn(16, d)
    (dec(z) - torch.randn(16, D)).pow(2).sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_gradient_reaches_the_encoder_through_z():
    dec = _decoder(1, 2, singular=[0.7])
    z = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dec(z).sum(), z)
    eps = 1e-6
    fd = (dec(z.detach() + eps).sum(-1) - dec(z.detach() - eps).sum(-1)) / (2 * eps)
    torch.testing.assert_close(grad[:, 0], fd, rtol=1e-6, atol=1e-8)


def test_runs_under_no_grad():
    dec = _decoder(2, 3)
    z = torch.randn(9, 2, dtype=torch.float64)
    expected = dec(z).detach()
    with torch.no_grad():
        out = dec(z)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)


def test_exact_evaluator_calls_it_under_no_grad():
    """quadrature_log_likelihood (decoder under no_grad) agrees with a trapezoid sum done here."""
    dec = _decoder(1, 2, singular=[0.5])
    lik = NormalLikelihood(0.5)
    x = torch.randn(5, 2, dtype=torch.float64)
    got = quadrature_log_likelihood(x, dec, lik, num_points=801)
    u = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
    log_w = torch.distributions.Normal(0.0, 1.0).log_prob(u[:, 0]) + math.log(16 / 4000)
    log_w[[0, -1]] -= math.log(2)
    log_p = lik(dec(u).detach()[:, None, :]).log_prob(x) + log_w[:, None]
    torch.testing.assert_close(got, torch.logsumexp(log_p, 0), rtol=0, atol=1e-6)


def _svi_losses(model, guide, loss, steps=50, lr=2e-2):
    svi = SVI(model, guide, Adam({"lr": lr}), loss)
    losses = torch.tensor([svi.step() for _ in range(steps)])
    assert torch.isfinite(losses).all()
    return losses


@pytest.mark.parametrize(
    "loss", [Trace_ELBO(), TraceIWAE_ELBO(num_particles=4, max_plate_nesting=1)], ids=["elbo", "iwae"]
)
def test_vae_training_decreases_the_loss(loss):
    pyro.set_rng_seed(0)
    x = _curve()
    model = VAEModel(LIDVAEDecoder(1, 2, hidden=(8, 8)), x, 1, NormalLikelihood(0.3))
    guide = MeanFieldGuide(mlp(2, 2, (8,)), x, 1)
    losses = _svi_losses(model, guide, loss)
    assert losses[-10:].mean() < losses[:10].mean() - 0.2 * losses[:10].std() - 5.0


def test_mapa_training_decreases_the_loss():
    pyro.set_rng_seed(0)
    x = _curve()
    lik = NormalLikelihood(0.3)
    model = EmpiricalizedModel(AmortizedCodebook(mlp(2, 1, (8,)), LIDVAEDecoder(1, 2, hidden=(8, 8)), x), lik)
    table = PosteriorTable.from_data(x, lik.kernel())
    losses = _svi_losses(model, MAPAGuide(table, data=x), TraceMAPA_ELBO(3, 2, max_plate_nesting=1))
    assert losses[-10:].mean() < losses[:10].mean() - 5.0
    assert model.codebook.decoder_passes > 0


def test_full_rank_linear_alone():
    torch.manual_seed(0)
    beta = FullRankLinear(3, 5, (1e-3, 10.0))
    s = beta.singular_values()
    torch.testing.assert_close(s, torch.full((3,), 1.0))  # starts at 1 when 1 is in range
    assert FullRankLinear(1, 2, (2.0, 5.0)).singular_values().item() >= 2.0  # starts inside a range without 1


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"latent_dim \(d = 3\) must be <= data_dim \(D = 2\)"):
        LIDVAEDecoder(3, 2)
    with pytest.raises(ValueError, match="strength"):
        LIDVAEDecoder(1, 2, strength=0.0)
    with pytest.raises(ValueError, match="strength"):
        LIDVAEDecoder(1, 2, strength=-1.0)
    for bad in [(0.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1e-5, float("inf")), (-1.0, 2.0)]:
        with pytest.raises(ValueError, match="beta_singular_range must satisfy 0 < low < high"):
            LIDVAEDecoder(1, 2, beta_singular_range=bad)
    with pytest.raises(ValueError, match="beta_singular_range must be a pair"):
        LIDVAEDecoder(1, 2, beta_singular_range=(1.0,))
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        LIDVAEDecoder(0, 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        LIDVAEDecoder(1, 2, activation="tanh")
    dec = LIDVAEDecoder(2, 3, hidden=(4,))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\)"):
        dec(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\)"):
        dec(torch.tensor(1.0))
