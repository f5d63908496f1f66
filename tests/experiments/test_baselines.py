"""The LiBI paper's baselines as registered methods: β-VAE, annealed β-VAE, Lagging (He et al. 2019)."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyro_mapa.methods as methods
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import TraceBetaELBO, annealed_beta, build_method


@pytest.fixture(scope="module")
def data():
    return load_dataset("circle", 60, 30, 30, seed=0)


def loss_at(setup, loss, idx, seed=0):
    pyro.set_rng_seed(seed)
    return loss.loss(setup.model, setup.guide, idx)


def test_beta_one_is_the_vaes_loss_and_beta_scales_only_the_kl_estimate(data):
    pyro.clear_param_store()
    vae = build_method("VAE", data.train, data.likelihood, hidden=(8,), seed=0)
    beta1 = build_method("beta-VAE", data.train, data.likelihood, hidden=(8,), seed=0, options={"beta": 1.0})
    assert isinstance(beta1.loss, TraceBetaELBO) and isinstance(vae.loss, Trace_ELBO)
    beta1.model, beta1.guide = vae.model, vae.guide  # the same networks
    idx = torch.arange(20)
    ref = loss_at(vae, vae.loss, idx)
    assert loss_at(beta1, beta1.loss, idx) == ref  # exactly
    # β = 2.5: the loss gains 1.5 × (N/B) × Σ_batch (log q(z|x) − log p(z)) at the same draw z (the plate's
    # subsample scale N/B = 3), nothing else changes.
    pyro.set_rng_seed(0)
    tr = poutine.trace(vae.guide).get_trace(idx)
    z = tr.nodes["z"]["value"]
    with torch.no_grad():
        q = vae.guide.distribution(data.train[idx])
        kl_est = float((q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)).sum())
    got = loss_at(vae, TraceBetaELBO(2.5, max_plate_nesting=1), idx)
    assert got == pytest.approx(ref + 1.5 * 3 * kl_est, rel=1e-6, abs=1e-5)
    assert abs(1.5 * kl_est) > 1.0  # the difference is far above the tolerance


def test_annealed_schedule_values():
    assert [annealed_beta(e, 10) for e in range(10)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [annealed_beta(e, 4, beta=2.0) for e in range(4)] == [0.0, 1.0, 2.0, 2.0]
    assert [annealed_beta(e, 1) for e in range(1)] == [0.0]
    assert [annealed_beta(e, 8, warmup_fraction=0.25) for e in range(4)] == [0.0, 0.5, 1.0, 1.0]


def test_annealed_method_trains_with_the_schedule(data, monkeypatch):
    seen = []
    real = TraceBetaELBO.loss_and_grads

    def spy(self, model, guide, *args, **kwargs):
        seen.append(self.beta)
        return real(self, model, guide, *args, **kwargs)

    monkeypatch.setattr(TraceBetaELBO, "loss_and_grads", spy)
    pyro.clear_param_store()
    setup = build_method("annealed-beta-VAE", data.train, data.likelihood, hidden=(8,), options={"beta": 2.0})
    res = setup.train(epochs=4, batch_size=20, progress=False)  # 3 steps per epoch, W = 2 epochs
    assert seen == [0.0] * 3 + [1.0] * 3 + [2.0] * 6
    assert res.steps == 12 and setup.loss.beta == 2.0  # left at its final value


def test_lagging_encoder_only_segments_leave_the_decoder_unchanged(data, monkeypatch):
    calls = []
    real = methods.fit

    def spy(model, guide, loss, *args, **kwargs):
        dec, enc = model.decoder, guide.encoder
        frozen = not any(p.requires_grad for p in dec.parameters())
        before = [p.detach().clone() for p in dec.parameters()]
        enc_before = [p.detach().clone() for p in enc.parameters()]
        out = real(model, guide, loss, *args, **kwargs)
        calls.append((frozen, kwargs["epochs"], all(torch.equal(a, b) for a, b in zip(before, dec.parameters())),
                      all(torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))))
        return out

    monkeypatch.setattr(methods, "fit", spy)
    pyro.clear_param_store()
    setup = build_method("Lagging", data.train, data.likelihood, hidden=(8,), options={"segments": 3})
    res = setup.train(epochs=12, batch_size=20, lr=1e-2, progress=False)
    # 3 segments of 4 epochs: 2 encoder-only (decoder untouched, encoder trained), then 2 joint (both trained).
    assert calls == [(True, 2, True, False), (False, 2, False, False)] * 3
    assert res.epoch_stages == [f"segment {k} {p}" for k in (1, 2, 3) for p in ("encoder",) * 2 + ("joint",) * 2]
    assert len(res.epoch_losses) == 12 and res.steps == 12 * 3
    assert all(p.requires_grad for p in setup.decoder.parameters())
