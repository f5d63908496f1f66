"""HamiltonianGuide (HVAE): exact checks against the mean-field guide, autograd Jacobians, closed forms."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_mapa import (
    MeanFieldGuide,
    NormalLikelihood,
    TraceIWAE_ELBO,
    VAEModel,
    mlp,
    quadrature_log_likelihood,
)
from pyro_mapa.infer.hamiltonian_guide import HamiltonianGuide, leapfrog_flow, tempering_schedule

F64 = torch.float64


class FixedEncoder(nn.Module):
    """q₀(z | x) = N(loc, scale) for every x (no parameters): a chosen, possibly bad, base."""

    def __init__(self, loc, scale):
        super().__init__()
        self.register_buffer("out", torch.cat([loc, torch.log(torch.expm1(scale))]))

    def forward(self, x):
        return self.out.expand(*x.shape[:-1], -1)


def linear_gaussian(d=2, big_d=3, sigma=0.5, seed=1):
    """x = W z + b + σ ε with z ~ N(0, I): p(x) = N(b, W Wᵀ + σ² I) and a Gaussian posterior."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(big_d, d, generator=g, dtype=F64), torch.randn(big_d, generator=g, dtype=F64)
    dec = nn.Linear(d, big_d).double()
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    x0 = torch.tensor([1.0, -0.5, 2.0], dtype=F64)[:big_d]
    log_px = torch.distributions.MultivariateNormal(
        b, w @ w.T + sigma**2 * torch.eye(big_d, dtype=F64)
    ).log_prob(x0)
    post_cov = torch.linalg.inv(torch.eye(d, dtype=F64) + w.T @ w / sigma**2)
    post_mean = post_cov @ w.T @ (x0 - b) / sigma**2
    return dec, x0, float(log_px), post_mean, post_cov.diagonal().sqrt()


def bound_draws(model, guide):
    """Per-point HVAE bound samples log p(x, z_K) − log_density (one draw per data point)."""
    guide_tr = poutine.trace(guide).get_trace()
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace()
    total = 0.0
    for name, site in model_tr.nodes.items():
        if site["type"] == "sample" and name != "data":
            total = total + site["fn"].log_prob(site["value"])
    site = guide_tr.nodes["z"]
    return total - site["fn"].log_prob(site["value"])


def hvae(encoder, model, data, d, **kw):
    """The guide with the settings these tests were written for: no tempering, step size 0.2 (the class
    defaults are the registry's HVAE: learned tempering from beta0 = 0.5, step size 0.1)."""
    kw.setdefault("tempering", "none")
    kw.setdefault("step_size", 0.2)
    return HamiltonianGuide(encoder, model, latent_dim=d, data=data, **kw)


def tiny_vae(n=6, d=1, big_d=2, seed=0, activation=nn.Tanh):
    torch.manual_seed(seed)
    x = torch.randn(n, big_d, dtype=F64)
    enc = mlp(big_d, 2 * d, (8,), activation).double()
    dec = mlp(d, big_d, (8,), activation).double()
    return enc, VAEModel(dec, x, d, NormalLikelihood(0.5)), x


# ---------------------------------------------------------------- K = 0 is the mean-field guide


@pytest.mark.parametrize(
    "elbo", [lambda: Trace_ELBO(max_plate_nesting=1), lambda: TraceIWAE_ELBO(4, max_plate_nesting=1)]
)
def test_k0_equals_mean_field_exactly(elbo):
    enc, model, x = tiny_vae(n=7)
    batch = torch.tensor([0, 3, 5])
    losses, grads = [], []
    for guide in (MeanFieldGuide(enc, x, 1), hvae(enc, model, x, 1, num_leapfrog=0)):
        enc.zero_grad()
        pyro.set_rng_seed(3)
        loss = elbo().differentiable_loss(model, guide, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert torch.equal(losses[0], losses[1])
    # the loss is bit-identical; its gradient differs by rounding only (the backward graphs differ)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(*grads))


# ---------------------------------------------------------------- the flow itself


def test_tempering_schedule_closed_form():
    # 1/√β₀ = 2, K = 2: 1/√β_k = −k²/4 + 2 = 2, 1.75, 1
    betas = tempering_schedule(torch.tensor(0.25, dtype=F64), 2)
    assert torch.allclose(betas, torch.tensor([0.25, 1 / 1.75**2, 1.0], dtype=F64), rtol=0, atol=1e-15)
    assert torch.equal(tempering_schedule(torch.tensor(1.0), 4), torch.ones(5))


def test_leapfrog_matches_harmonic_oscillator_closed_form():
    # U = ω² z² / 2: one untempered leapfrog step is the linear map
    # [[1 − h²/2, ε], [−εω²(1 − h²/4), 1 − h²/2]] with h = εω
    omega = torch.tensor([0.7, 1.9], dtype=F64)
    eps = torch.tensor([0.3, 0.1], dtype=F64)
    z0, rho0 = torch.tensor([0.4, -1.2], dtype=F64), torch.tensor([1.1, 0.5], dtype=F64)
    zk, rhok = leapfrog_flow(z0, rho0, lambda z: omega**2 * z, eps, torch.ones(5, dtype=F64))
    h2 = (eps * omega) ** 2
    for i in range(2):
        m = torch.tensor(
            [[1 - h2[i] / 2, eps[i]], [-eps[i] * omega[i] ** 2 * (1 - h2[i] / 4), 1 - h2[i] / 2]], dtype=F64
        )
        expected = torch.linalg.matrix_power(m, 4) @ torch.stack([z0[i], rho0[i]])
        assert torch.allclose(torch.stack([zk[i], rhok[i]]), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("beta0,num_steps", [(0.3, 2), (0.8, 5), (1.0, 3)])
def test_flow_log_jacobian_is_half_d_log_beta0(d, beta0, num_steps):
    a = torch.tensor([[1.5, 0.6], [0.6, 0.8]], dtype=F64)[:d, :d]

    def grad_u(z):  # U(z) = zᵀAz/2 + Σ z⁴/4 + Σ sin z: a coupled, non-linear potential
        return z @ a + z**3 + torch.cos(z)

    eps = torch.tensor([0.31, 0.17], dtype=F64)[:d]
    betas = tempering_schedule(torch.tensor(beta0, dtype=F64), num_steps)

    def flow(v):
        zk, rhok = leapfrog_flow(v[:d], v[d:], grad_u, eps, betas)
        return torch.cat([zk, rhok])

    jac = torch.autograd.functional.jacobian(flow, torch.tensor([0.3, -0.7, 0.9, 0.2], dtype=F64)[: 2 * d])
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign > 0
    assert abs(float(logdet) - d / 2 * math.log(beta0)) < 1e-10


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_guide_transform_log_jacobian_with_and_without_the_clip(d, max_grad_norm):
    """The guide's own map (∇U from the model, clipped or not) has log|det J| = (d/2) log β₀."""
    enc, model, x = tiny_vae(n=3, d=d, big_d=3)
    beta0 = 0.4
    guide = hvae(
        enc, model, x, d, num_leapfrog=4, tempering="fixed", beta0=beta0, max_grad_norm=max_grad_norm
    )
    point = torch.tensor([1])

    def flow(v):
        zk, rhok = guide.transform(v[:d][None], v[d:][None], point)
        return torch.cat([zk[0], rhok[0]])

    v0 = torch.tensor([0.3, -0.7, 2.5, 1.8], dtype=F64)[: 2 * d]
    if max_grad_norm is not None:  # the clip is active on this path
        z = v0[:d][None].clone().requires_grad_()
        (g,) = torch.autograd.grad(guide.log_joint(z, point, point).sum(), z)
        assert float(g.norm()) > 2 * max_grad_norm
    sign, logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, v0))
    assert sign > 0
    assert abs(float(logdet) - d / 2 * math.log(beta0)) < 1e-10


# ---------------------------------------------------------------- the bound against exact answers


def affine_flow_gaussian(hess, shift, eps, betas, mean0, var0, beta0):
    """Mean and covariance of (z_K, ρ_K) when ∇U(z) = H z − h (so the flow is affine), written out by hand."""
    d = hess.shape[0]
    eye, zero = torch.eye(d, dtype=F64), torch.zeros(d, d, dtype=F64)
    kick = torch.cat([torch.cat([eye, zero], 1), torch.cat([-(eps / 2)[:, None] * hess, eye], 1)])
    kick_shift = torch.cat([torch.zeros(d, dtype=F64), eps / 2 * shift])
    drift = torch.cat([torch.cat([eye, torch.diag(eps)], 1), torch.cat([zero, eye], 1)])
    a, c = torch.eye(2 * d, dtype=F64), torch.zeros(2 * d, dtype=F64)
    for k in range(1, len(betas)):
        temper = torch.diag(torch.cat([torch.ones(d, dtype=F64), (betas[k - 1] / betas[k]).sqrt().expand(d)]))
        for m, o in [(kick, kick_shift), (drift, 0.0), (kick, kick_shift), (temper, 0.0)]:
            a, c = m @ a, m @ c + o
    mean = a @ torch.cat([mean0, torch.zeros(d, dtype=F64)]) + c
    cov = a @ torch.diag(torch.cat([var0, torch.full((d,), 1 / beta0, dtype=F64)])) @ a.T
    return mean, cov


@pytest.mark.parametrize(
    "k,offset,kw",
    [
        (5, 0.0, {"tempering": "fixed", "beta0": 0.5}),
        (5, 2.0, {"tempering": "fixed", "beta0": 0.25}),
        (3, 1.0, {}),
    ],
)
def test_mean_bound_equals_closed_form_linear_gaussian(k, offset, kw):
    """x = W z + b + σ ε makes the flow affine: E[bound] = log p(x) − KL(N(μ_K, S_K) ‖ p(z | x) ⊗ N(0, I))."""
    sigma = 0.5
    dec, x0, log_px, post_mean, post_sd = linear_gaussian(sigma=sigma)
    w, b = dec.weight.detach(), dec.bias.detach()
    hess = torch.eye(2, dtype=F64) + w.T @ w / sigma**2  # ∇U(z) = H z − h
    shift = w.T @ (x0 - b) / sigma**2
    m = 4000
    x = x0.expand(m, -1).clone()
    model = VAEModel(dec, x, 2, NormalLikelihood(sigma))
    eps = torch.tensor([0.2, 0.15], dtype=F64)
    base_mean, base_sd = post_mean + offset * post_sd, post_sd
    guide = hvae(FixedEncoder(base_mean, base_sd), model, x, 2, num_leapfrog=k, step_size=eps, **kw)
    with torch.no_grad():
        v = bound_draws(model, guide)
    beta0 = kw.get("beta0", 1.0)
    betas = tempering_schedule(torch.tensor(beta0, dtype=F64), k)
    mean_k, cov_k = affine_flow_gaussian(hess, shift, eps, betas, base_mean, base_sd**2, beta0)
    target = torch.distributions.MultivariateNormal(
        torch.cat([torch.linalg.solve(hess, shift), torch.zeros(2, dtype=F64)]),
        torch.block_diag(torch.linalg.inv(hess), torch.eye(2, dtype=F64)),
    )
    kl = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(mean_k, cov_k), target)
    exact = log_px - float(kl)
    mean, se = float(v.mean()), float(v.std() / m**0.5)
    assert se < 0.05  # a dropped (d/2) log β₀ moves the mean by 0.69 or 1.39
    assert abs(mean - exact) < 4 * se
    assert exact < log_px and mean < log_px + 4 * se


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_bound_below_quadrature_and_unbiased_in_1d(max_grad_norm):
    """E[exp(bound)] = p(x) (an unbiased weight) and E[bound] <= log p(x), p(x) by quadrature.

    With ``max_grad_norm=1`` the clip is active (it lowers the mean bound by ~0.4 nats here) and the
    weights stay unbiased: the guard keeps the flow's Jacobian.
    """
    torch.manual_seed(2)
    dec = mlp(1, 2, (8,), nn.Tanh).double()
    x0 = torch.tensor([0.8, -0.4], dtype=F64)
    lik = NormalLikelihood(0.4)
    log_px = float(quadrature_log_likelihood(x0[None], dec, lik)[0])
    # the exact posterior's mean and sd on a grid, for a decent fixed base q₀
    u = torch.linspace(-8, 8, 4001, dtype=F64)[:, None]
    with torch.no_grad():
        logp = lik(dec(u)).log_prob(x0) + torch.distributions.Normal(0.0, 1.0).log_prob(u[:, 0])
    post = torch.softmax(logp, 0)
    mean = (post * u[:, 0]).sum()
    sd = ((post * (u[:, 0] - mean) ** 2).sum()).sqrt()
    m = 4000
    x = x0.expand(m, -1).clone()
    model = VAEModel(dec, x, 1, lik)
    guide = hvae(
        FixedEncoder(mean[None], 1.2 * sd[None]),
        model,
        x,
        1,
        num_leapfrog=5,
        tempering="fixed",
        beta0=0.5,
        max_grad_norm=max_grad_norm,
    )
    with torch.no_grad():
        v = bound_draws(model, guide)
    w = torch.exp(v - log_px)
    w_mean, w_se = float(w.mean()), float(w.std() / m**0.5)
    assert w_se < 0.03  # a dropped (d/2) log β₀ scales the weights by 0.71
    assert abs(w_mean - 1) < 4 * w_se
    b_mean, b_se = float(v.mean()), float(v.std() / m**0.5)
    assert b_se < 0.03
    assert b_mean < log_px + 4 * b_se


def test_bound_rises_with_k_when_the_base_is_badly_placed():
    dec, x0, log_px, mean, sd = linear_gaussian()
    m = 3000
    x = x0.expand(m, -1).clone()
    model = VAEModel(dec, x, 2, NormalLikelihood(0.5))
    enc = FixedEncoder(mean + 2 * sd, sd)  # two posterior sds off
    stats = []
    for k, kw in [(0, {}), (5, {"tempering": "fixed", "beta0": 0.25})]:
        with torch.no_grad():
            v = bound_draws(model, hvae(enc, model, x, 2, num_leapfrog=k, step_size=0.2, **kw))
        stats.append((float(v.mean()), float(v.std() / m**0.5)))
    (b0, se0), (b5, se5) = stats
    se = math.hypot(se0, se5)
    assert se < 0.15
    assert b5 - b0 > max(1.0, 4 * se)  # measured: about +2.8 nats
    assert b5 < log_px + 4 * se5 and b0 < log_px + 4 * se0


# ---------------------------------------------------------------- gradients, counts, vectorisation


def test_gradients_match_finite_differences_through_the_flow():
    """Autograd of the loss (fixed draws) equals central differences for φ, θ, ε and β₀ (learned).

    Without ``create_graph=True`` in ∇U the θ, φ, ε and β₀ paths through the flow would be lost.
    """
    enc, model, x = tiny_vae(n=4, d=2, big_d=3)
    guide = hvae(enc, model, x, 2, num_leapfrog=3, tempering="learned", beta0=0.6, step_size=[0.2, 0.3])

    def loss_fn():
        pyro.set_rng_seed(7)
        return Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide)

    params = {
        "encoder": next(enc.parameters()),
        "decoder": next(model.decoder.parameters()),
        "step_size": guide.flow.raw_step_size,
        "beta0": guide.flow.raw_beta0,
    }
    grads = torch.autograd.grad(loss_fn(), list(params.values()))
    h = 1e-6
    for (name, p), g in zip(params.items(), grads):
        flat, gflat = p.data.view(-1), g.reshape(-1)
        assert float(gflat.abs().max()) > 1e-3, name
        for i in range(min(2, flat.numel())):
            old = float(flat[i])
            flat[i] = old + h
            up = float(loss_fn().detach())
            flat[i] = old - h
            down = float(loss_fn().detach())
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert abs(fd - float(gflat[i])) < 1e-6 * max(1.0, abs(fd)), (name, i, fd, float(gflat[i]))


@pytest.mark.parametrize("k", [0, 3])
def test_decoder_passes_are_counted_honestly(k):
    """K >= 1: K + 1 gradient evaluations in the guide plus the ELBO's own model run, per point."""
    enc, model, x = tiny_vae(n=5)
    guide = hvae(enc, model, x, 1, num_leapfrog=k)
    model.decoder_passes = 0
    Trace_ELBO(max_plate_nesting=1).loss(model, guide, torch.tensor([1, 2, 4]))
    grad_evals = k + 1 if k else 0
    assert guide.gradient_evaluations == 3 * grad_evals
    assert model.decoder_passes == 3 * (grad_evals + 1)


def test_vectorised_iwae_equals_per_point_bounds_on_tiled_data():
    """TraceIWAE_ELBO's particle plate on a minibatch: point n's P draws are the bounds of P tiled copies.

    The subsample scale N/B multiplies each point's log-mean-exp; the guide's model runs see the minibatch.
    """
    enc, model, x = tiny_vae(n=5, d=2, big_d=3)
    batch = torch.tensor([4, 1])
    p = 3
    kw = {"num_leapfrog": 3, "tempering": "fixed", "beta0": 0.5}
    pyro.set_rng_seed(5)
    loss = TraceIWAE_ELBO(p, max_plate_nesting=1).loss(model, hvae(enc, model, x, 2, **kw), batch)
    tiled = x[batch].repeat(p, 1)  # row p·B + i is minibatch point i, particle p
    tiled_model = VAEModel(model.decoder, tiled, 2, NormalLikelihood(0.5))
    pyro.set_rng_seed(5)
    with torch.no_grad():
        v = bound_draws(tiled_model, hvae(enc, tiled_model, tiled, 2, **kw)).reshape(p, len(batch))
    expected = -len(x) / len(batch) * (torch.logsumexp(v, 0) - math.log(p)).sum()
    assert abs(loss - float(expected)) < 1e-10


def test_initial_values_and_the_clip_exactly():
    """ε and β₀ start where asked; one kick from rest moves z by (ε²/2)·min(‖∇U‖, c) along −∇U."""
    enc, model, x = tiny_vae(n=3, d=2, big_d=3)
    guide = hvae(enc, model, x, 2, num_leapfrog=1, tempering="learned", beta0=0.6, step_size=[0.1, 0.3])
    assert torch.allclose(guide.step_size, torch.tensor([0.1, 0.3], dtype=F64), rtol=0, atol=1e-15)
    assert abs(float(guide.beta0.detach()) - 0.6) < 1e-15
    z0 = torch.tensor([[2.0, -1.5], [0.1, 0.2], [-3.0, 1.0]], dtype=F64)
    zg = z0.clone().requires_grad_()
    (g,) = torch.autograd.grad(model_log_joint(guide, zg), zg)  # g = −∇U
    norms = g.norm(dim=-1)
    cap = float(norms.median())  # the clip is active for one point, inactive for another
    for c, expected_norm in [(None, norms), (1e9, norms), (cap, norms.clamp_max(cap))]:
        guide = hvae(enc, model, x, 2, num_leapfrog=1, step_size=0.25, max_grad_norm=c)
        zk, _ = guide.transform(z0, torch.zeros_like(z0))  # ρ₀ = 0: z₁ = z₀ − (ε²/2) ĝ(z₀)
        step = (zk - z0) / (0.25**2 / 2)
        assert torch.allclose(step, g / norms[:, None] * expected_norm[:, None], rtol=0, atol=1e-12)


def test_log_joint_is_the_models_per_point_log_joint_with_masks():
    """U's log joint equals log N(z; 0, I) + log p(x | z) point by point, and respects poutine.mask."""
    enc, model, x = tiny_vae(n=4, d=2, big_d=3)
    z = torch.randn(4, 2, dtype=F64)
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + model.likelihood(
        model.decoder(z)
    ).log_prob(x)
    guide = hvae(enc, model, x, 2)
    assert torch.allclose(guide.log_joint(z, None, torch.arange(4)), exact, rtol=0, atol=1e-12)
    keep = torch.tensor([True, False, True, False])
    masked = hvae(enc, poutine.mask(model, mask=keep), x, 2)
    assert torch.allclose(
        masked.log_joint(z, None, torch.arange(4)), torch.where(keep, exact, 0.0), rtol=0, atol=1e-12
    )


def model_log_joint(guide, z):
    return guide.log_joint(z, None, torch.arange(len(z))).sum()


# ---------------------------------------------------------------- robustness and arguments


def exploding_model(n=4):
    """A float32 decoder so steep that ∇U overflows within a few leapfrog steps."""
    dec = nn.Linear(1, 2)
    with torch.no_grad():
        dec.weight.fill_(1e4)
        dec.bias.zero_()
    x = torch.ones(n, 2)
    return VAEModel(dec, x, 1, NormalLikelihood(1e-3)), x


def test_saturating_decoder_raises_a_clear_error_without_the_guard():
    model, x = exploding_model()
    guide = hvae(mlp(2, 2, (4,)), model, x, 1, num_leapfrog=8, step_size=0.4)
    with pytest.raises(ValueError, match="non-finite at gradient evaluation"):
        Trace_ELBO(max_plate_nesting=1).loss(model, guide)
    pyro.enable_validation(False)  # without Pyro's own checks, our finiteness check names the cause
    with pytest.raises(ValueError, match="non-finite at gradient evaluation"):
        Trace_ELBO(max_plate_nesting=1).loss(model, guide)


def test_saturating_decoder_is_finite_with_the_clip():
    model, x = exploding_model()
    guide = hvae(mlp(2, 2, (4,)), model, x, 1, num_leapfrog=8, step_size=0.4, max_grad_norm=10.0)
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in guide.encoder.parameters())


def test_nan_decoder_output_names_the_cause():
    """Pyro's validation would reject a NaN location first; without it our own check names the cause."""
    pyro.enable_validation(False)
    enc, model, x = tiny_vae()
    model.decoder = nn.Sequential(model.decoder, nn.Hardtanh(-float("inf"), float("nan")))
    guide = hvae(enc, model, x, 1, num_leapfrog=2)
    with pytest.raises(ValueError, match="decoder saturates"):
        Trace_ELBO(max_plate_nesting=1).loss(model, guide)


@pytest.mark.parametrize(
    "kw,err,match",
    [
        ({"num_leapfrog": -1}, ValueError, "num_leapfrog must be >= 0"),
        ({"num_leapfrog": 2.0}, TypeError, "num_leapfrog must be an int"),
        ({"step_size": 0.0}, ValueError, r"step_size must lie in the open interval \(0, 0.5\)"),
        ({"step_size": 0.5}, ValueError, r"step_size must lie in the open interval \(0, 0.5\)"),
        ({"step_size": [0.1, 0.7]}, ValueError, "step_size must lie"),
        ({"step_size": [0.1, 0.2, 0.3]}, ValueError, r"step_size must be a scalar or have shape \(2,\)"),
        ({"tempering": "free"}, ValueError, "tempering must be one of"),
        ({"tempering": "fixed", "beta0": 2.0}, ValueError, r"beta0 must lie in \(0, 1\]"),
        ({"tempering": "fixed", "beta0": 0.0}, ValueError, r"beta0 must lie in \(0, 1\]"),
        ({"tempering": "none", "beta0": 0.5}, ValueError, "tempering='none' fixes beta0 = 1"),
        ({"tempering": "learned", "beta0": 1.0}, ValueError, "tempering='learned' needs 0 < beta0 < 1"),
        ({"tempering": "learned", "num_leapfrog": 0}, ValueError, "for num_leapfrog=0 .* pass tempering='none'"),
        ({"tempering": "fixed", "beta0": 0.5, "num_leapfrog": 0}, ValueError, "needs num_leapfrog >= 1"),
        ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm must be None or a positive"),
    ],
)
def test_bad_arguments(kw, err, match):
    enc, model, x = tiny_vae(d=2)
    with pytest.raises(err, match=match):
        hvae(enc, model, x, 2, **kw)


def test_defaults_are_the_registrys_hvae():
    enc, model, x = tiny_vae(d=2)
    guide = HamiltonianGuide(enc, model, latent_dim=2, data=x)
    assert (guide.num_leapfrog, guide.tempering) == (5, "learned")
    torch.testing.assert_close(guide.step_size.detach(), torch.full((2,), 0.1, dtype=guide.step_size.dtype))
    assert abs(float(guide.beta0.detach()) - 0.5) < 1e-12
    # beta0 left out means 1 without tempering, so the mean-field special case needs only tempering="none".
    mean_field = HamiltonianGuide(enc, model, latent_dim=2, data=x, num_leapfrog=0, tempering="none")
    assert float(mean_field.beta0) == 1.0


def test_data_other_than_the_models_is_refused():
    enc, model, x = tiny_vae(d=2)
    with pytest.raises(ValueError, match=r"HamiltonianGuide's data \(its data argument\) has shape"):
        hvae(enc, model, x[:-1], 2)
    with pytest.raises(ValueError, match=r"HamiltonianGuide's data \(its data argument\) differs .* \(first: row 0\)"):
        hvae(enc, model, x + 1, 2)


def test_wrong_site_or_encoder_width_is_named():
    enc, model, x = tiny_vae(d=2)
    with pytest.raises(ValueError, match="no sample site 'w'"):
        Trace_ELBO(max_plate_nesting=1).loss(model, hvae(enc, model, x, 2, site="w"))
    with pytest.raises(ValueError, match="encoder must output 2\\*latent_dim = 6"):
        hvae(enc, model, x, 3).distribution(x)


# ---------------------------------------------------------------- SVI


@pytest.mark.parametrize("loss", [lambda: Trace_ELBO(), lambda: TraceIWAE_ELBO(num_particles=3)])
def test_svi_runs_and_learns_flow_parameters(loss):
    torch.manual_seed(0)
    x = torch.randn(16, 2)
    model = VAEModel(mlp(2, 2, (8,)), x, 2, NormalLikelihood(0.5))
    guide = HamiltonianGuide(
        mlp(2, 4, (8,)),
        model,
        latent_dim=2,
        data=x,
        num_leapfrog=2,
        tempering="learned",
        beta0=0.5,
        step_size=0.1,
    )
    eps0, beta0 = guide.step_size.detach().clone(), guide.beta0.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss())
    losses = [svi.step(torch.randperm(16)[:8]) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    eps, beta = guide.step_size.detach(), guide.beta0.detach()
    assert not torch.equal(eps, eps0) and not torch.equal(beta, beta0)
    assert bool(((eps > 0) & (eps < 0.5)).all()) and 0 < float(beta) < 1
    assert {"hamiltonian_flow$$$raw_step_size", "hamiltonian_flow$$$raw_beta0"} <= set(
        pyro.get_param_store().keys()
    )
