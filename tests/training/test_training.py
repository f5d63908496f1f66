"""fit() and build_method(): every method trains, and the pass counters match hand counts."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_mapa import (
    EmpiricalizedModel,
    MAPAGuide,
    PosteriorTable,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    empirical_log_likelihood,
)
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import METHODS, LearnedModel, build_method, true_posterior_table
from pyro_mapa.priors import GaussianCopulaPrior
from pyro_mapa.training import fit

SIGMA = 0.05


@pytest.fixture(scope="module")
def figure8():
    return load_dataset("figure8", num_train=200, num_valid=10, num_test=50, seed=0)


def build(name, ds, **kw):
    table = None
    if name == "MAPA-GT":
        table = true_posterior_table(ds.train, ds.train_z, ds.decoder, ds.likelihood)
    return build_method(name, ds.train, ds.likelihood, table=table, **kw)


def test_methods_list():
    assert METHODS == (
        "VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive",  # the paper's methods
        "MAPA-free",  # free codes (one per point, no encoder)
        "RenyiELBO", "InfoVAE", "HVAE", "LIDVAE", "MAPA-LIDVAE", "LiBI",  # the seed methods
        "ExactDecoder", "beta-VAE", "annealed-beta-VAE", "Lagging",  # LiBI's reading and its paper's baselines
    )


@pytest.mark.parametrize("name", METHODS)
def test_short_fit_lowers_the_epoch_loss(name, figure8):
    setup = build(name, figure8)
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=5, batch_size=50, lr=1e-2, progress=False)
    assert len(res.epoch_losses) == 5
    assert res.steps == 5 * 4
    assert all(math.isfinite(v) for v in res.epoch_losses)
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    assert res.seconds_per_epoch > 0


def test_build_method_components(figure8):
    vae = build("VAE", figure8)
    assert isinstance(vae.loss, Trace_ELBO)
    iwae = build("IWAE", figure8, num_particles=7)
    assert isinstance(iwae.loss, TraceIWAE_ELBO) and iwae.loss.num_particles == 7
    for name in ("MAPA", "MAPA-GT", "MAPA-naive"):
        s = build(name, figure8, num_top=3, num_samples=2)
        assert isinstance(s.model, EmpiricalizedModel)
        assert isinstance(s.guide, MAPAGuide)
        assert isinstance(s.loss, TraceMAPA_ELBO)
        assert (s.loss.num_top, s.loss.num_samples) == (3, 2)
        assert s.guide.table.num_rows == s.guide.table.num_categories == 200
        assert s.model.codebook.encoder is s.encoder and s.model.codebook.decoder is s.decoder
    # MAPA's table is the kernel table of the data with bandwidth sigma.
    mapa = build("MAPA", figure8)
    ref = PosteriorTable.from_data(figure8.train, figure8.likelihood.kernel())
    assert torch.equal(mapa.guide.table.indices, ref.indices)
    torch.testing.assert_close(mapa.guide.table.log_probs, ref.log_probs)
    # MAPA-naive's table is uniform.
    naive = build("MAPA-naive", figure8)
    torch.testing.assert_close(naive.guide.table.log_probs, torch.full((200, 200), -math.log(200)))
    # Same seed, same initial decoder.
    a, b = build("MAPA", figure8, seed=3), build("VAE", figure8, seed=3)
    for p, q in zip(a.decoder.parameters(), b.decoder.parameters()):
        assert torch.equal(p, q)


def test_build_method_errors(figure8):
    with pytest.raises(ValueError) as err:
        build_method("AE", figure8.train, figure8.likelihood)
    for name in METHODS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="MAPA-GT"):
        build_method("MAPA-GT", figure8.train, figure8.likelihood)


def test_true_posterior_table_is_eq7_by_brute_force():
    ds = load_dataset("circle", num_train=15, num_valid=5, num_test=5, seed=2)
    table = true_posterior_table(ds.train, ds.train_z, ds.decoder, ds.likelihood)
    means = ds.decoder(ds.train_z.double())
    x = ds.train.double()
    ref = torch.empty(15, 15, dtype=torch.float64)
    for n in range(15):
        for i in range(15):
            ref[n, i] = -float(((x[n] - means[i]) ** 2).sum()) / (2 * SIGMA**2)
    ref = ref - ref.logsumexp(1, keepdim=True)
    dense = torch.empty(15, 15, dtype=torch.float64).scatter_(1, table.indices, table.log_probs.double())
    finite = ref > -80  # float32 log-probabilities are compared where they are representable
    torch.testing.assert_close(dense[finite], ref[finite], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ pass counts
def test_vae_passes_are_one_per_point_per_step(figure8):
    setup = build("VAE", figure8, hidden=(16,))
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=50, lr=1e-3, progress=False)
    assert res.encoder_passes_per_point == 1.0
    assert res.decoder_passes_per_point == 1.0
    assert res.passes_per_point == 2.0


@pytest.mark.parametrize("particles", [3, 7])
def test_iwae_passes_are_one_encoder_and_p_decoder(particles, figure8):
    setup = build("IWAE", figure8, hidden=(16,), num_particles=particles)
    # Batch size 30 does not divide 200: counts are per point, so still exact.
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=30, lr=1e-3, progress=False)
    assert res.steps == 2 * 7
    assert res.encoder_passes_per_point == 1.0
    assert res.decoder_passes_per_point == float(particles)


def test_mapa_top1_passes_are_one_per_point(figure8):
    # K=1, S=0: the top-1 index of row n of the kernel table is n itself, so a batch's unique
    # indices are the batch.
    setup = build("MAPA", figure8, hidden=(16,), num_top=1, num_samples=0)
    top1 = setup.guide.table.top_k(None, 1).indices[:, 0]
    assert torch.equal(top1, torch.arange(200))
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=50, lr=1e-3, progress=False)
    assert res.encoder_passes_per_point == 1.0
    assert res.decoder_passes_per_point == 1.0


def test_mapa_gt_top1_passes_match_hand_count(figure8):
    # MAPA-GT's top-1 of row n is the code whose true mean is nearest x_n: often not n itself,
    # and shared between points, so fewer than one pass per point.
    setup = build("MAPA-GT", figure8, hidden=(16,), num_top=1, num_samples=0)
    top1 = setup.guide.table.top_k(None, 1).indices[:, 0]
    batches = _replay_batches(0, 200, 50, 2)
    expected = sum(len(torch.unique(top1[b])) for b in batches)
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=50, lr=1e-3, progress=False)
    assert res.encoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    assert res.decoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    assert res.decoder_passes_per_point < 1.0


@pytest.mark.parametrize("name", ["MAPA", "MAPA-naive"])
@pytest.mark.parametrize("n,batch", [(12, 4), (10, 4)])
def test_mapa_top_n_passes_are_n_per_batch(name, n, batch):
    # K=N: every step decodes all N codes once; steps per epoch = ceil(N/B), so per point that is
    # ceil(N/B) (= N/B when B divides N).
    ds = load_dataset("circle", num_train=n, num_valid=5, num_test=5, seed=1)
    setup = build_method(name, ds.train, ds.likelihood, hidden=(8,), num_top=n, num_samples=3)
    res = fit(setup.model, setup.guide, setup.loss, n, epochs=3, batch_size=batch, lr=1e-3, progress=False)
    steps_per_epoch = math.ceil(n / batch)
    assert res.steps == 3 * steps_per_epoch
    assert res.encoder_passes_per_point == pytest.approx(steps_per_epoch, abs=1e-12)
    assert res.decoder_passes_per_point == pytest.approx(steps_per_epoch, abs=1e-12)


def _replay_batches(seed, n, batch, epochs):
    pyro.set_rng_seed(seed)
    return [b for _ in range(epochs) for b in torch.randperm(n).split(batch)]


def test_mapa_top2_passes_match_hand_count(figure8):
    # K=2, S=0 is deterministic given the batches: count the unique top-2 indices of each batch.
    setup = build("MAPA", figure8, hidden=(16,), num_top=2, num_samples=0)
    table = setup.guide.table
    batches = _replay_batches(5, 200, 40, 2)
    expected = sum(len(torch.unique(table.top_k(b, 2).indices)) for b in batches)
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=40, lr=1e-3, seed=5, progress=False)
    assert res.encoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    assert res.decoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    # Neighbours are shared, so strictly fewer passes than the K*B = 2 per point upper bound.
    assert 1.0 < res.encoder_passes_per_point < 2.0


def test_mapa_with_samples_passes_match_hand_count(figure8):
    # K=2, S=3: the remainder draws come from the global RNG right after each batch's permutation
    # is drawn; replaying that sequence reproduces the exact index sets.
    setup = build("MAPA", figure8, hidden=(16,), num_top=2, num_samples=3)
    table = setup.guide.table
    pyro.set_rng_seed(9)
    expected = 0
    for _ in range(2):
        for b in torch.randperm(200).split(50):
            top = table.top_k(b, 2).indices
            rest = table.sample_remainder(b, 2, 3).indices
            expected += len(torch.unique(torch.cat([top, rest], 1)))
    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=2, batch_size=50, lr=1e-3, seed=9, progress=False)
    assert res.encoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    assert res.decoder_passes_per_point == pytest.approx(expected / 400, abs=1e-12)
    assert 1.0 < res.decoder_passes_per_point <= 5.0


def test_fit_with_negligible_learning_rate_reports_exact_mean_loss():
    # K=N, S=0 is the exact log-likelihood of the empiricalized model; with lr=1e-30 (lr=0 is refused)
    # Adam's steps of about 1e-30 are below float32 resolution of every weight: nothing changes,
    # so each epoch's mean loss per point is exactly -mean_n log p(x_n).
    ds = load_dataset("clusters", num_train=12, num_valid=5, num_test=5, seed=0)
    setup = build_method("MAPA", ds.train, ds.likelihood, hidden=(8,), num_top=12, num_samples=0)
    before = [p.detach().clone() for p in setup.model.parameters()]
    res = fit(setup.model, setup.guide, setup.loss, 12, epochs=3, batch_size=4, lr=1e-30, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, setup.model.parameters()))
    with torch.no_grad():
        exact = -float(empirical_log_likelihood(setup.model.codebook, ds.likelihood).mean())
    for v in res.epoch_losses:
        assert v == pytest.approx(exact, rel=1e-5)


def test_fit_callback_stops_early(figure8):
    setup = build("VAE", figure8, hidden=(8,))
    seen = []

    def callback(epoch, loss):
        seen.append((epoch, loss))
        return epoch == 1

    res = fit(setup.model, setup.guide, setup.loss, 200, epochs=10, batch_size=100, lr=1e-3, progress=False, callback=callback)
    assert len(res.epoch_losses) == 2
    assert [e for e, _ in seen] == [0, 1]
    assert [l for _, l in seen] == res.epoch_losses
    assert res.steps == 4


# ------------------------------------------------------------------------------ learned model
@pytest.fixture(scope="module")
def trained_mapa(figure8):
    pyro.clear_param_store()
    setup = build("MAPA", figure8, hidden=(32, 32))
    fit(setup.model, setup.guide, setup.loss, 200, epochs=5, batch_size=50, lr=1e-2, progress=False)
    pyro.clear_param_store()
    return setup


def brute_learned_log_prob(lm, x, num=40001, lim=9.0):
    u = torch.linspace(-lim, lim, num, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        mean = lm.decode(u.float()).double()
    h = 2 * lim / (num - 1)
    log_phi = -0.5 * u[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    out = []
    for xi in x.double():
        lp = -((xi - mean) ** 2).sum(-1) / (2 * SIGMA**2) - math.log(2 * math.pi * SIGMA**2)
        out.append(torch.logsumexp(lp + log_phi, 0) + math.log(h))
    return torch.stack(out)


def test_learned_mapa_model_prior_is_copula_of_codes(trained_mapa):
    lm = trained_mapa.learned_model()
    assert isinstance(lm, LearnedModel)
    assert isinstance(lm.prior, GaussianCopulaPrior)
    with torch.no_grad():
        codes = trained_mapa.model.codebook.codes().reshape(-1)
    assert torch.equal(lm.prior.z_knots, torch.sort(codes).values)
    u = torch.randn(7, 1)
    with torch.no_grad():
        torch.testing.assert_close(lm.decode(u), trained_mapa.decoder(lm.prior.transform(u)))


def test_learned_vae_model_has_standard_normal_prior(figure8):
    setup = build("VAE", figure8, hidden=(8,))
    lm = setup.learned_model()
    assert lm.prior is None
    u = torch.randn(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(lm.decode(u), setup.decoder(u))


def test_learned_model_log_prob_is_finite_and_matches_brute_force(trained_mapa, figure8):
    lm = trained_mapa.learned_model()
    x = figure8.test
    lp = lm.log_prob(x)
    assert lp.shape == (50,)
    assert lp.dtype == torch.float64
    assert torch.isfinite(lp).all()
    ref = brute_learned_log_prob(lm, x[:8])
    # The integrand is piecewise smooth (LeakyReLU decoder, piecewise-linear copula), so the
    # 4001-node rule agrees with a 40001-node one to a small, not machine-precision, tolerance.
    torch.testing.assert_close(lp[:8], ref, rtol=0, atol=5e-3)


def test_learned_model_samples(trained_mapa):
    lm = trained_mapa.learned_model()
    torch.manual_seed(0)
    x = lm.sample(4000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (4000, 2)
    assert torch.isfinite(x).all()
    # The latents come from the generator: rebuild the means and check the noise is N(0, sigma^2 I).
    u = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        resid = (x - lm.decode(u)).double()
    k = resid.numel()
    assert abs(float(resid.mean())) < 5 * SIGMA / math.sqrt(k)
    assert abs(float(resid.std()) - SIGMA) < 5 * SIGMA / math.sqrt(2 * k)
    assert lm.sample(3).shape == (3, 2)
