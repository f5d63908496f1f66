"""Negligible importance weights never reach the backward pass as subnormal numbers.

Cases are built so that some particles sit 60-110 nats below their point's best one:
without the mask their float32 weights (and the gradients they scale) are subnormal.
The masked float32 loss and gradients are compared with the unmasked float64 ones.
"""

import math
import traceback

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import pyro_mapa.infer._importance_elbo as base_module
import pyro_mapa.infer.iwae_elbo as iwae_module
from pyro_mapa import (
    AmortizedCodebook,
    EmpiricalizedModel,
    MAPAGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    mlp,
)
from pyro_mapa.infer.iwae_elbo import drop_negligible, negligible_log_ratio

N, SIGMA = 30, 0.05


class SubnormalCounter(TorchDispatchMode):
    """Counts subnormal entries among the floating-point inputs of every op run under it."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for a in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
                n = int(((a.abs() < torch.finfo(a.dtype).tiny) & (a != 0)).sum())
                if n:
                    self.count += n
                    self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def unmasked(monkeypatch):
    """Turns the mask off (an infinite gap): the computation as it was before the mask."""
    monkeypatch.setattr(iwae_module, "negligible_log_ratio", lambda dtype: math.inf)
    monkeypatch.setattr(base_module, "negligible_log_ratio", lambda dtype: math.inf)


# ---------------------------------------------------------------- drop_negligible
def test_threshold_is_eps_squared():
    assert negligible_log_ratio(torch.float32) == pytest.approx(-2 * math.log(2.0**-23))
    assert negligible_log_ratio(torch.float32) == pytest.approx(31.88, abs=0.01)
    assert negligible_log_ratio(torch.float64) == pytest.approx(72.09, abs=0.01)


def test_drop_negligible_values_and_exact_zero_gradients():
    gap = negligible_log_ratio(torch.float32)
    log_w = torch.tensor(
        [[0.0, -5.0, 3.0], [-gap + 0.01, -100.0, 3.0 - gap - 0.01], [-gap - 0.01, -4.0, -math.inf]],
        requires_grad=True,
    )
    out = drop_negligible(log_w, dim=0)
    expected = log_w.detach().clone()
    expected[2, 0] = -math.inf  # 0.01 nats beyond the gap below column 0's best (0.0)
    expected[1, 1] = -math.inf  # 96 nats below column 1's best (-4.0)
    expected[1, 2] = -math.inf  # 0.01 nats beyond the gap below column 2's best (3.0)
    assert torch.equal(out.detach(), expected)
    torch.logsumexp(out, dim=0).sum().backward()
    g = log_w.grad
    assert g[2, 0] == 0 and g[1, 1] == 0 and g[1, 2] == 0 and g[2, 2] == 0  # exact zeros
    # The kept entries get their softmax weight among the kept ones.
    kept = torch.tensor([[0.0, -gap + 0.01], [-5.0, -4.0]])
    torch.testing.assert_close(g[:2, 0], torch.softmax(kept[0], 0))
    torch.testing.assert_close(g[[0, 2], 1], torch.softmax(kept[1], 0))
    assert g[0, 2] == 1


def test_drop_negligible_keeps_nan_and_all_minus_inf():
    log_w = torch.tensor([[float("nan"), -math.inf], [-500.0, -math.inf]])
    out = drop_negligible(log_w, dim=0)
    assert torch.isnan(out[0, 0]) and out[1, 0] == -500.0  # a NaN column is left as it was
    assert torch.all(out[:, 1] == -math.inf)


# ---------------------------------------------------------------- MAPA
def line_mapa(dtype):
    """``N`` points on a line and codes decoded to the points: code ``j`` is ``0.95 (j - n)²`` nats
    below code ``n`` for point ``n`` (spacing 2/29, sigma 0.05), so gaps run from 0 to ~800 nats."""
    x = torch.linspace(-1.0, 1.0, N).unsqueeze(1)
    torch.manual_seed(0)
    enc, dec = mlp(1, 1, (8,), activation=nn.Identity), mlp(1, 1, (8,), activation=nn.Identity)
    with torch.no_grad():  # dec(enc(.)) is linear: rescale it to the identity, so mu_i = x_i
        dec[-1].weight /= float((dec(enc(x[-1:])) - dec(enc(x[:1]))).squeeze()) / 2.0
        dec[-1].bias -= (dec(enc(x)) - x).mean()
    cb = AmortizedCodebook(enc.to(dtype), dec.to(dtype), x.to(dtype))
    return EmpiricalizedModel(cb, NormalLikelihood(SIGMA)), x


def mapa_loss_and_grads(dtype, k, s, batch):
    pyro.clear_param_store()
    model, x = line_mapa(dtype)
    table = PosteriorTable.from_data(x, NormalLikelihood(0.6).kernel())  # float32, shared; wide rows
    elbo = TraceMAPA_ELBO(k, s, rng_seed=3, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, MAPAGuide(table, "c", "data"), batch)
    counter = SubnormalCounter()
    with counter:
        loss.backward()
    params = list(model.codebook.parameters())
    return loss.detach(), [p.grad.detach().clone() for p in params], counter


@pytest.mark.parametrize("k, s", [(N, 0), (4, 6)], ids=["enumerated", "sampled"])
def test_mapa_no_subnormals_and_same_loss_and_grads(k, s):
    batch = torch.arange(6)  # points 0-5: codes 18-22 are ~90-100 nats away from all of them
    loss32, grads32, counter = mapa_loss_and_grads(torch.float32, k, s, batch)
    assert counter.count == 0, f"subnormal inputs in the backward pass: {counter.ops}"
    for g in grads32:
        assert not torch.any((g.abs() < torch.finfo(g.dtype).tiny) & (g != 0))
    # Reference: float64, without the mask (nothing there is anywhere near subnormal).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iwae_module, "negligible_log_ratio", lambda dtype: math.inf)
        mp.setattr(base_module, "negligible_log_ratio", lambda dtype: math.inf)
        loss64, grads64, _ = mapa_loss_and_grads(torch.float64, k, s, batch)
    torch.testing.assert_close(loss32.double(), loss64, rtol=2e-6, atol=0)
    for g32, g64 in zip(grads32, grads64):
        scale = float(g64.abs().max())
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("k, s", [(N, 0), (4, 6)], ids=["enumerated", "sampled"])
def test_mapa_case_produces_subnormals_without_the_mask(unmasked, k, s):
    # The case is built to make them: without the mask, subnormals reach the backward matmuls.
    _, _, counter = mapa_loss_and_grads(torch.float32, k, s, torch.arange(6))
    assert counter.count > 0
    if s == 0:  # code 15 is used only by point 5, 95 nats below its best: a subnormal decoder row
        assert counter.ops & {"mm", "addmm"}


# ---------------------------------------------------------------- IWAE
P, B, D_LAT = 40, 5, 1
EPS = torch.linspace(-5.0, 5.0, P).reshape(P, 1, 1).expand(P, B, D_LAT)


def iwae_case(dtype):
    """A deterministic IWAE: fixed standard-normal draws EPS, so float32 and float64 see the same particles."""
    torch.manual_seed(1)
    enc, dec = mlp(1, 2 * D_LAT, (8,)).to(dtype), mlp(D_LAT, 1, (8,)).to(dtype)
    with torch.no_grad():
        dec[-1].weight *= 3.0  # widen the decoder's range: gaps from 0 to a few hundred nats
    x = torch.linspace(-0.5, 0.5, B, dtype=dtype).unsqueeze(1)
    eps = EPS.to(dtype)

    def model():
        pyro.module("dec", dec)
        with pyro.plate("data", B):
            z = pyro.sample("z", dist.Normal(torch.zeros(B, D_LAT, dtype=dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), SIGMA).to_event(1), obs=x)

    def guide():
        pyro.module("enc", enc)
        with pyro.plate("data", B):
            loc, log_scale = enc(x).split(D_LAT, dim=-1)
            q = dist.Normal(loc, log_scale.exp()).to_event(1)
            z = loc + log_scale.exp() * eps  # (P, B, d): the particle plate is dim -2
            pyro.sample("z", dist.Delta(z, log_density=q.log_prob(z), event_dim=1))

    return model, guide, list(dec.parameters()) + list(enc.parameters())


def iwae_loss_and_grads(dtype, dreg):
    pyro.clear_param_store()
    model, guide, params = iwae_case(dtype)
    elbo = TraceIWAE_ELBO(P, dreg=dreg, max_plate_nesting=1)
    counter = SubnormalCounter()
    if dreg:
        with counter:  # forward and DReG's two backward passes
            loss = elbo.loss_and_grads(model, guide)
    else:
        loss_t = elbo.differentiable_loss(model, guide)
        with counter:
            loss_t.backward()
        loss = float(loss_t.detach())
    return loss, [p.grad.detach().clone() for p in params], counter


@pytest.mark.parametrize("dreg", [False, True], ids=["iwae", "dreg"])
def test_iwae_no_subnormals_and_same_loss_and_grads(dreg):
    loss32, grads32, counter = iwae_loss_and_grads(torch.float32, dreg)
    assert counter.count == 0, f"subnormal inputs: {counter.ops}"
    for g in grads32:
        assert not torch.any((g.abs() < torch.finfo(g.dtype).tiny) & (g != 0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iwae_module, "negligible_log_ratio", lambda dtype: math.inf)
        mp.setattr(base_module, "negligible_log_ratio", lambda dtype: math.inf)
        loss64, grads64, _ = iwae_loss_and_grads(torch.float64, dreg)
    assert loss32 == pytest.approx(loss64, rel=2e-6)
    for g32, g64 in zip(grads32, grads64):
        scale = float(g64.abs().max())
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dreg", [False, True], ids=["iwae", "dreg"])
def test_iwae_case_produces_subnormals_without_the_mask(unmasked, dreg):
    _, _, counter = iwae_loss_and_grads(torch.float32, dreg)
    assert counter.count > 0
    assert counter.ops & {"mm", "addmm"}


def test_mapa_case_gaps():
    model, x = line_mapa(torch.float64)
    lik = model.likelihood(model.codebook(torch.arange(N)))  # batch (N,) over the N codes
    ll = lik.log_prob(x.double().unsqueeze(1))  # (n, i)
    gaps = ll.amax(1, keepdim=True) - ll
    j = torch.arange(N).double()
    torch.testing.assert_close(gaps, 0.5 * ((j[:, None] - j[None]) * (2 / 29) / SIGMA) ** 2, rtol=1e-6, atol=1e-6)


def test_cases_cover_the_subnormal_window():
    # The float64 log-weight gaps of both cases span kept (< 31.9), dropped-but-normal and
    # subnormal (87-104 nats) float32 weights, so the comparisons above exercise all three.
    pyro.clear_param_store()
    model, guide, _ = iwae_case(torch.float64)
    elbo = TraceIWAE_ELBO(P, max_plate_nesting=1)
    log_w = elbo._log_weights(model, guide, (), {})[0].detach()
    gaps = log_w.amax(0) - log_w
    assert bool(((gaps > 1) & (gaps < 20)).any())
    assert bool(((gaps > 40) & (gaps < 80)).any())
    assert bool(((gaps > 88) & (gaps < 103)).any())


# ---------------------------------------------------------------- host syncs of a step
class ScalarReads(TorchDispatchMode):
    """Attributes every host read of a tensor value (``.item()``, ``float()``, ``bool()``: ``aten::_local_scalar_dense``,
    a device sync on an accelerator) to the innermost ``pyro_mapa`` module on the stack."""

    def __init__(self):
        super().__init__()
        self.by_module: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_local_scalar_dense":
            frames = [f.filename for f in traceback.extract_stack() if "pyro_mapa" in f.filename]
            key = frames[-1].split("pyro_mapa")[-1] if frames else "outside pyro_mapa"
            self.by_module[key] = self.by_module.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("objective", ["mapa", "iwae", "dreg"])
def test_the_elbo_reads_one_scalar_per_step(objective):
    # The loss value that SVI.step returns is the ELBO's one host read (it is also the
    # finiteness check); validation off, as for accelerator training.
    pyro.enable_validation(False)
    try:
        if objective == "mapa":
            model, x = line_mapa(torch.float32)
            table = PosteriorTable.from_data(x, NormalLikelihood(0.6).kernel())
            guide, elbo = MAPAGuide(table, "c", "data"), TraceMAPA_ELBO(3, 2, max_plate_nesting=1)
            args, module = (torch.arange(6),), "/infer/_importance_elbo.py"
        else:
            model, guide, _ = iwae_case(torch.float32)
            elbo, args, module = TraceIWAE_ELBO(P, dreg=objective == "dreg", max_plate_nesting=1), (), "/infer/_importance_elbo.py"
        elbo.loss_and_grads(model, guide, *args)  # first step: one-off checks
        reads = ScalarReads()
        with reads:
            elbo.loss_and_grads(model, guide, *args)
        assert reads.by_module.get(module) == 1, reads.by_module
    finally:
        pyro.enable_validation(True)
