"""LiBI as the paper describes it (pyro_mapa.training.libi): stage 1's loss by hand, stage 2 freezes θ,
rounds restart the code network from the inference network's mean head, the best round is chosen on validation."""

import math

import numpy as np
import pyro
import pytest
import torch
from torch import nn

import pyro_mapa.training.libi as libi
from pyro_mapa import NormalLikelihood, mlp
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit_libi, libi_code_loss, load_mean_head

F64 = torch.float64


def linear(n_in, n_out, weight, bias):
    layer = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=F64))
        layer.bias.copy_(torch.tensor(bias, dtype=F64))
    return layer


def tiny_case():
    """Fixed float64 networks: codes h(x) = W_h x + b_h (2 of them), decoder f(z) = W_f z + b_f in R^3."""
    code = linear(3, 2, [[0.9, -0.4, 0.3], [0.2, 0.7, -0.5]], [0.1, -0.2])
    dec = linear(2, 3, [[1.0, 0.5], [-0.3, 0.8], [0.6, -1.1]], [0.05, -0.1, 0.2])
    x = torch.tensor([[0.3, -1.2, 0.8], [1.5, 0.2, -0.7], [-0.9, 0.4, 1.1], [0.1, 1.8, -0.2], [-1.4, -0.6, 0.5],
                      [0.7, -0.3, -1.6], [0.2, 0.9, 0.4]], dtype=F64)
    return code, dec, x


def hand_loss(code, dec, x, sigma, eps_hz, eps_cov, eps_mean):
    """The paper's loss written out in NumPy: mean Gaussian NLL + ε_HZ e^HZ + e^{‖Σ−I‖²/ε_Σ} + e^{‖μ‖²/ε_μ}."""
    X = x.numpy()
    Wh, bh = code.weight.detach().numpy(), code.bias.detach().numpy()
    Wf, bf = dec.weight.detach().numpy(), dec.bias.detach().numpy()
    Z = X @ Wh.T + bh
    M = Z @ Wf.T + bf
    n, d = Z.shape
    nll = np.mean(np.sum((X - M) ** 2 / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi), axis=1))
    S = np.cov(Z, rowvar=False, bias=True)
    Si = np.linalg.inv(S)
    zbar = Z.mean(0)
    beta = ((2 * d + 1) / 4) ** (1 / (d + 4)) * n ** (1 / (d + 4)) / math.sqrt(2)
    b2 = beta**2
    pairs = sum(math.exp(-b2 / 2 * (Z[j] - Z[k]) @ Si @ (Z[j] - Z[k])) for j in range(n) for k in range(n))
    single = sum(math.exp(-b2 / (2 * (1 + b2)) * (Z[j] - zbar) @ Si @ (Z[j] - zbar)) for j in range(n))
    hz = n * (pairs / n**2 - 2 * (1 + b2) ** (-d / 2) * single / n + (1 + 2 * b2) ** (-d / 2))
    parts = (nll, eps_hz * math.exp(hz), math.exp(np.sum((S - np.eye(d)) ** 2) / eps_cov),
             math.exp(np.sum(zbar**2) / eps_mean))
    return sum(parts), parts


def test_stage1_loss_is_the_papers_written_out_by_hand():
    code, dec, x = tiny_case()
    lik = NormalLikelihood(0.5)
    out = libi_code_loss(dec, code, x, lik, hz_weight=0.3, cov_scale=0.7, mean_scale=0.4)
    total, parts = hand_loss(code, dec, x, 0.5, 0.3, 0.7, 0.4)
    got = [float(t.detach()) for t in (out.nll, out.hz_penalty, out.cov_penalty, out.mean_penalty)]
    for a, b in zip(got, parts):
        assert math.isclose(a, b, rel_tol=1e-10), (got, parts)
    assert math.isclose(float(out.total.detach()), total, rel_tol=1e-10)
    assert min(parts[1:]) > 1e-3 * parts[0]  # every penalty weighs in the total (none negligible)
    # fit_libi's first stage-1 epoch (one batch of all 7 rows, lr so small the step changes nothing
    # before the loss is read) records exactly this loss.
    pyro.clear_param_store()
    enc = linear(3, 4, np.full((4, 3), 0.1).tolist(), [0.0] * 4)
    r = fit_libi(dec, x, lik, 2, encoder=enc, code_network=code, hz_weight=0.3, cov_scale=0.7, mean_scale=0.4,
                 stage1_epochs=1, stage2_epochs=0, batch_size=7, lr=1e-12)
    assert math.isclose(r.rounds[0].stage1_losses[0], total, rel_tol=1e-10)


@pytest.fixture(scope="module")
def jtex():
    ds = load_dataset("linear_jtex", num_train=60, num_valid=40, num_test=2, seed=0)
    return ds.train, ds.valid, ds.likelihood


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_leaves_the_decoder_bit_for_bit_unchanged_in_every_round(jtex, monkeypatch):
    x, _, lik = jtex
    real, checked = libi._stage2, []

    def spy(decoder, model, guide, *args):
        before, enc_before = state(decoder), state(guide.encoder)
        out = real(decoder, model, guide, *args)
        checked.append(all(torch.equal(v, before[k]) for k, v in decoder.state_dict().items()))
        assert any(not torch.equal(v, enc_before[k]) for k, v in guide.encoder.state_dict().items())  # φ trained
        return out

    monkeypatch.setattr(libi, "_stage2", spy)
    pyro.clear_param_store()
    torch.manual_seed(0)
    dec = mlp(2, 2, (8,))
    start = state(dec)
    r = fit_libi(dec, x, lik, 2, rounds=2, stage1_epochs=2, stage2_epochs=3, batch_size=20, lr=1e-2, hidden=(8,))
    assert checked == [True, True]
    assert any(not torch.equal(v, start[k]) for k, v in dec.state_dict().items())  # stage 1 did train θ
    assert all(p.requires_grad for p in dec.parameters()) and dec.training
    assert [len(rd.stage2_losses) for rd in r.rounds] == [3, 3]


def test_load_mean_head_is_the_encoders_location_output(jtex):
    x = jtex[0]
    torch.manual_seed(1)
    enc, code = mlp(2, 4, (6,)), mlp(2, 2, (6,))
    load_mean_head(code, enc, 2)
    out = enc(x)
    assert torch.allclose(code(x), out[:, :2], rtol=0, atol=1e-6)  # float32 matmuls of other widths
    assert (code(x) - out[:, 2:]).abs().max() > 0.01  # the location, not the scale
    with pytest.raises(ValueError, match="code_network"):
        load_mean_head(mlp(2, 2, (5,)), enc, 2)


def test_each_round_starts_its_code_network_from_the_previous_rounds_inference_network(jtex, monkeypatch):
    x, _, lik = jtex
    real1, real2 = libi._stage1, libi._stage2
    code_at_start, code_at_end, enc_after = [], [], []

    def spy1(decoder, code_network, *args):
        code_at_start.append(state(code_network))
        out = real1(decoder, code_network, *args)
        code_at_end.append(state(code_network))
        return out

    def spy2(decoder, model, guide, *args):
        out = real2(decoder, model, guide, *args)
        enc_after.append(state(guide.encoder))
        return out

    monkeypatch.setattr(libi, "_stage1", spy1)
    monkeypatch.setattr(libi, "_stage2", spy2)
    pyro.clear_param_store()
    torch.manual_seed(0)
    enc = mlp(2, 4, (8,))
    enc0 = state(enc)
    fit_libi(mlp(2, 2, (8,)), x, lik, 2, encoder=enc, rounds=3, stage1_epochs=2, stage2_epochs=2, batch_size=20,
             lr=1e-2, hidden=(8,))
    assert len(code_at_start) == 3
    for t, enc_state in enumerate([enc0, *enc_after[:2]]):  # round 1: the initial encoder's mean head
        expected = {"0.weight": enc_state["0.weight"], "0.bias": enc_state["0.bias"],
                    "2.weight": enc_state["2.weight"][:2], "2.bias": enc_state["2.bias"][:2]}
        assert set(code_at_start[t]) == set(expected)
        for k, v in expected.items():
            assert torch.equal(code_at_start[t][k], v), (t, k)
        if t > 0:  # not where stage 1 left it
            assert not torch.equal(code_at_start[t]["2.weight"], code_at_end[t - 1]["2.weight"])


def test_the_round_with_the_best_validation_log_likelihood_is_returned(jtex, monkeypatch):
    x, valid, lik = jtex
    scripted, seen = iter([-3.0, -1.0, -2.0]), []

    def fake(decoder, likelihood, data, latent_dim, seed):
        seen.append((data, state(decoder)))
        return next(scripted)

    monkeypatch.setattr(libi, "_selection_log_likelihood", fake)
    pyro.clear_param_store()
    torch.manual_seed(0)
    dec = mlp(2, 2, (8,))
    r = fit_libi(dec, x, lik, 2, rounds=3, stage1_epochs=2, stage2_epochs=1, batch_size=20, lr=1e-2, hidden=(8,),
                 valid_data=valid)
    assert [rd.log_likelihood for rd in r.rounds] == [-3.0, -1.0, -2.0]
    assert r.best_round == 1 and r.selection == "valid"
    assert all(data is valid for data, _ in seen)
    best, last = seen[1][1], seen[2][1]
    assert all(torch.equal(v, best[k]) for k, v in dec.state_dict().items())  # round 2's θ, loaded back
    assert any(not torch.equal(v, last[k]) for k, v in dec.state_dict().items())
    # A NaN round is never chosen, and without valid_data the training data chooses.
    scripted, seen = iter([float("nan"), -5.0]), []
    pyro.clear_param_store()
    r = fit_libi(mlp(2, 2, (8,)), x, lik, 2, rounds=2, stage1_epochs=1, stage2_epochs=1, batch_size=20, hidden=(8,))
    assert r.best_round == 1 and r.selection == "train" and all(data is x for data, _ in seen)


def test_selection_log_likelihood_is_exact_for_a_linear_decoder():
    """d = 2, f(z) = W z + b: p(x) = N(b, W Wᵀ + σ² I) in closed form."""
    dec = linear(2, 2, [[0.8, 0.3], [-0.4, 0.9]], [0.2, -0.1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=F64)
    w, b = dec.weight.detach(), dec.bias.detach()
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + 0.09 * torch.eye(2, dtype=F64)).log_prob(x).mean()
    got = libi._selection_log_likelihood(dec, NormalLikelihood(0.3), x, 2, 0)
    assert abs(got - float(exact)) < 1e-6


def test_bad_arguments_are_refused_naming_them(jtex):
    x, _, lik = jtex
    dec = mlp(2, 2, (4,))
    for kw, name in (({"rounds": 0}, "rounds"), ({"hz_weight": 0.0}, "hz_weight"), ({"cov_scale": -1.0}, "cov_scale"),
                     ({"mean_scale": 0}, "mean_scale"), ({"code_network": mlp(2, 3, (4,))}, "code_network"),
                     ({"encoder": mlp(2, 3, (4,))}, "encoder"), ({"batch_size": 3}, "batch_size"),
                     ({"rounds": 2, "code_network": mlp(2, 2, (5,)), "hidden": (4,)}, "code_network")):
        pyro.clear_param_store()
        with pytest.raises(ValueError, match=name):
            fit_libi(dec, x, lik, 2, stage1_epochs=1, stage2_epochs=1, batch_size=kw.pop("batch_size", 20), **kw)
    with pytest.raises(TypeError, match="hz_weight"):
        fit_libi(dec, x, lik, 2, hz_weight="1")


def test_registered_method_runs_rounds_and_marks_their_stages(jtex):
    x, _, lik = jtex
    pyro.clear_param_store()
    setup = build_method("LiBI", x, lik, latent_dim=2, hidden=(8,), options={"rounds": 2, "stage1_fraction": 0.5})
    res = setup.train(epochs=4, batch_size=20, progress=False)
    assert res.epoch_stages == ["round 1 stage 1", "round 1 stage 2", "round 2 stage 1", "round 2 stage 2"]
    assert res.steps == 4 * 3 and res.decoder_passes_per_point == 1.0  # one decoder row per point per step
    assert setup.guide.encoder is setup.encoder and setup.model.decoder is setup.decoder


# ---- Stage 1 through training.fit, with LiBICodeLoss (pyro_mapa.training.libi_loss) ----

WEIGHTS = {"hz_weight": 0.3, "cov_scale": 0.7, "mean_scale": 0.4}


def test_the_stage1_loss_object_is_n_times_libi_code_loss_and_registers_both_networks():
    from pyro_mapa.training.libi_loss import LiBICodeGuide, LiBICodeLoss, LiBICodeModel

    code, dec, x = tiny_case()
    lik = NormalLikelihood(0.5)
    pyro.clear_param_store()
    model, guide, loss = LiBICodeModel(dec, x, lik), LiBICodeGuide(code, x), LiBICodeLoss(2, **WEIGHTS)
    rows = torch.tensor([6, 0, 2, 5, 4])
    sub_total, _ = hand_loss(code, dec, x[rows], 0.5, 0.3, 0.7, 0.4)
    assert math.isclose(loss.loss(model, guide, rows), 7 * sub_total, rel_tol=1e-10)  # N = 7 times L(B)
    # Its gradient is that of libi_code_loss on the same rows, times N.
    value = loss.differentiable_loss(model, guide, rows)
    grads = torch.autograd.grad(value, [dec.weight, code.weight])
    ref = libi_code_loss(dec, code, x[rows], lik, **WEIGHTS).total
    assert math.isclose(float(value.detach()), 7 * float(ref.detach()), rel_tol=1e-12)
    for g, r in zip(grads, torch.autograd.grad(7 * ref, [dec.weight, code.weight])):
        assert torch.allclose(g, r, rtol=1e-12, atol=0)
    # loss_and_grads (one whole-data step): the value, gradients in .grad, the step recorded.
    total, _ = hand_loss(code, dec, x, 0.5, 0.3, 0.7, 0.4)
    assert math.isclose(loss.loss_and_grads(model, guide, torch.arange(7)), 7 * total, rel_tol=1e-10)
    assert dec.weight.grad is not None and code.weight.grad is not None
    assert loss.steps == 1 and len(loss.epoch_losses) == 1 and math.isclose(loss.epoch_losses[0], total, rel_tol=1e-10)
    # Pyro sees the modules' own tensors under "decoder" and "libi_code_network"; every row is counted.
    store = pyro.get_param_store()
    assert store["decoder$$$weight"] is dec.weight and store["libi_code_network$$$bias"] is code.bias
    assert model.decoder_passes == guide.encoder_passes == 5 + 5 + 7
    pyro.clear_param_store()


def _old_stage1(decoder, code_network, x, lik, epochs, batch_size, lr, seed, d):
    """The loop stage 1 ran before it went through fit: its own Adam, randperm minibatches from a generator
    seeded by seed, a last minibatch of fewer than d + 2 rows merged into the one before."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([*decoder.parameters(), *code_network.parameters()], lr=lr)
    losses = []
    for _ in range(epochs):
        parts = list(torch.randperm(len(x), generator=gen).split(batch_size))
        if len(parts) > 1 and len(parts[-1]) < d + 2:
            parts[-2:] = [torch.cat(parts[-2:])]
        total = 0.0
        for idx in parts:
            loss = libi_code_loss(decoder, code_network, x[idx], lik, **WEIGHTS).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / len(parts))
    return losses


@pytest.mark.parametrize("n", [10, 12])  # 10 rows: batches 4, 4, 2 and the 2 merged (4, 6); 12: 4, 4, 4
def test_stage1_through_fit_takes_the_old_loops_steps_with_a_short_last_batch_merged(n):
    import copy

    code, dec, _ = tiny_case()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    lik = NormalLikelihood(0.5)
    enc = linear(3, 4, np.full((4, 3), 0.1).tolist(), [0.0] * 4)
    ref_dec, ref_code = copy.deepcopy(dec), copy.deepcopy(code)
    expected = _old_stage1(ref_dec, ref_code, x, lik, epochs=3, batch_size=4, lr=1e-2, seed=5, d=2)
    pyro.clear_param_store()
    r = fit_libi(dec, x, lik, 2, encoder=enc, code_network=code, stage1_epochs=3, stage2_epochs=0, batch_size=4,
                 lr=1e-2, seed=5, **WEIGHTS)
    got = r.rounds[0].stage1_losses
    assert len(got) == 3 and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(got, expected)), (got, expected)
    for net, ref in ((dec, ref_dec), (code, ref_code)):
        for p, q in zip(net.parameters(), ref.parameters()):
            assert torch.allclose(p, q, rtol=1e-12, atol=0)
    steps = 3 * (2 if n == 10 else 3)
    s1 = r.rounds[0].stage1
    assert r.stage1_steps == s1.steps == steps and s1.epoch_losses == got
    assert s1.encoder_passes_per_point == s1.decoder_passes_per_point == 1.0  # one row per point per step
    assert not [k for k in pyro.get_param_store().keys() if k.startswith("libi_code_network")]  # stage 1 tidied up


def test_each_rounds_stage1_is_a_fit_run_with_the_loss_object_and_that_rounds_seed(jtex, monkeypatch):
    from pyro_mapa.training.libi_loss import LiBICodeGuide, LiBICodeLoss, LiBICodeModel

    x, _, lik = jtex
    real, calls = libi.fit, []

    def spy(model, guide, loss, n, **kw):
        calls.append((model, guide, loss, n, kw))
        return real(model, guide, loss, n, **kw)

    monkeypatch.setattr(libi, "fit", spy)
    pyro.clear_param_store()
    torch.manual_seed(0)
    dec, code = mlp(2, 2, (8,)), mlp(2, 2, (8,))
    r = fit_libi(dec, x, lik, 2, encoder=mlp(2, 4, (8,)), code_network=code, rounds=2, stage1_epochs=2,
                 stage2_epochs=1, batch_size=20, lr=1e-2, seed=7, **WEIGHTS)
    stage1 = [c for c in calls if isinstance(c[2], LiBICodeLoss)]
    assert len(calls) == 4 and [c[2] for c in calls[::2]] == [c[2] for c in stage1]  # stage 1 first, each round
    for t, (model, guide, loss, n, kw) in enumerate(stage1):
        assert isinstance(model, LiBICodeModel) and model.decoder is dec and model.data is x
        assert isinstance(guide, LiBICodeGuide) and guide.code_network is code
        assert loss.weights == WEIGHTS and loss.min_rows == 4 and n == 60
        assert kw["seed"] == 7 + t and kw["batch_size"] == 20 and kw["lr"] == 1e-2 and kw["epochs"] == 2
        assert r.rounds[t].stage1_losses == loss.epoch_losses and loss.steps == 2 * 3
    assert r.stage1_steps == 12


def test_a_non_finite_stage1_loss_raises_and_leaves_the_param_store_clean():
    from pyro_mapa.errors import NonFiniteLossError

    code, dec, x = tiny_case()
    with torch.no_grad():
        code.bias.fill_(1e3)  # exp(‖z̄‖² / ε_μ) overflows to inf
    enc = linear(3, 4, np.full((4, 3), 0.1).tolist(), [0.0] * 4)
    pyro.clear_param_store()
    with pytest.raises(NonFiniteLossError, match=r"LiBI stage 1, epoch 0, step 0 .*the loss is inf.*mean_scale"):
        fit_libi(dec, x, NormalLikelihood(0.5), 2, encoder=enc, code_network=code, stage1_epochs=1,
                 stage2_epochs=0, batch_size=7)
    assert list(pyro.get_param_store().keys()) == []
    # Another network already under stage 1's names would be trained instead: refused.
    pyro.module("libi_code_network", linear(3, 2, [[0.0] * 3] * 2, [0.0, 0.0]))
    with pytest.raises(ValueError, match="'libi_code_network\\$\\$\\$weight'.*clear_param_store"):
        fit_libi(dec, x, NormalLikelihood(0.5), 2, encoder=enc, code_network=code, stage1_epochs=1,
                 stage2_epochs=0, batch_size=7)
    pyro.clear_param_store()


def test_the_stage1_loss_has_no_traces_and_says_which_methods_to_call():
    """Pyro's ELBO requires ``_get_trace``; stage 1 samples nothing, so asking for traces is refused by name."""
    from pyro_mapa.training.libi_loss import LiBICodeGuide, LiBICodeLoss, LiBICodeModel

    code, dec, x = tiny_case()
    model, guide = LiBICodeModel(dec, x, NormalLikelihood(0.5)), LiBICodeGuide(code, x)
    with pytest.raises(NotImplementedError, match="call loss or loss_and_grads"):
        LiBICodeLoss(2, **WEIGHTS)._get_trace(model, guide, (torch.arange(3),), {})
