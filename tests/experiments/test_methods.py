"""Every method of the registry builds, trains and evaluates through one interface (`MethodSetup.train`)."""

import math

import pyro
import pytest
import torch

from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import METHODS, OPTION_GRIDS, build_method, true_posterior_table
from pyro_mapa.infer import HamiltonianGuide, TraceInfoVAE_ELBO
from pyro_mapa.models import LIDVAEDecoder


@pytest.fixture(scope="module")
def data():
    return load_dataset("circle", 60, 30, 30, seed=0)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_evaluates(name, data):
    pyro.clear_param_store()
    table = true_posterior_table(data.train, data.train_z, data.decoder, data.likelihood) if name == "MAPA-GT" else None
    setup = build_method(name, data.train, data.likelihood, hidden=(8,), table=table, seed=0)
    result = setup.train(len(data.train), epochs=2, batch_size=20, lr=1e-3, seed=0)
    assert len(result.epoch_losses) >= 2 and all(math.isfinite(v) for v in result.epoch_losses)
    assert result.steps > 0 and result.decoder_passes_per_point > 0
    ll = setup.learned_model().log_prob(data.valid, 401)
    assert ll.shape == (len(data.valid),) and bool(torch.isfinite(ll).all())


def test_options_reach_the_objects(data):
    info = build_method("InfoVAE", data.train, data.likelihood, hidden=(8,), options={"alpha": 0.5, "lambda_": 3.0})
    assert isinstance(info.loss, TraceInfoVAE_ELBO) and info.loss.mmd_weight == pytest.approx(0.5 + 3.0 - 1)
    hvae = build_method("HVAE", data.train, data.likelihood, hidden=(8,), options={"num_leapfrog": 3})
    assert isinstance(hvae.guide, HamiltonianGuide) and hvae.guide.num_leapfrog == 3
    lid = build_method("LIDVAE", data.train, data.likelihood, hidden=(8,))
    assert isinstance(lid.decoder, LIDVAEDecoder)
    for name, grid in OPTION_GRIDS.items():
        for opts in grid:
            build_method(name, data.train, data.likelihood, hidden=(8,), options=opts)


def test_exact_decoder_trains_the_decoder_only_in_stage_one(data):
    pyro.clear_param_store()
    setup = build_method("ExactDecoder", data.train, data.likelihood, hidden=(8,), options={"stage1_fraction": 0.5})
    result = setup.train(len(data.train), epochs=4, batch_size=20, lr=1e-3, seed=0)
    assert len(result.epoch_losses) == 4
    # Stage 1 decodes the whole grid once per step, shared by the batch: more decoder rows per point than a VAE.
    assert result.decoder_passes_per_point > 2


def test_free_codes_method_has_no_encoder_and_learns_its_codes(data):
    from pyro_mapa.models import FreeCodebook
    from pyro_mapa.models.free_codebook import pca_codes

    pyro.clear_param_store()
    free = build_method("MAPA-free", data.train, data.likelihood, hidden=(8,), seed=0)
    amortized = build_method("MAPA", data.train, data.likelihood, hidden=(8,), seed=0)
    cb = free.model.codebook
    assert isinstance(cb, FreeCodebook) and free.encoder is cb
    # MAPA's table (the same kernel on the same data), codes started at the PCA projection.
    torch.testing.assert_close(free.guide.table.log_probs, amortized.guide.table.log_probs)
    torch.testing.assert_close(cb.z.detach(), pca_codes(data.train, 1))
    start = cb.z.detach().clone()
    result = free.train(len(data.train), epochs=3, batch_size=20, lr=1e-2, seed=0)
    assert result.encoder_passes_per_point == 0 and result.decoder_passes_per_point > 0
    assert float((cb.z.detach() - start).abs().max()) > 1e-3


def test_unknown_method(data):
    with pytest.raises(ValueError, match="unknown method 'NVAE'; choose one of"):
        build_method("NVAE", data.train, data.likelihood)


@pytest.mark.parametrize("name", ["MAPA", "MAPA-free", "VAE"])
def test_latent_dim_zero_is_refused_when_built(name, data):
    with pytest.raises(ValueError, match="latent_dim must be >= 1, got 0"):
        build_method(name, data.train, data.likelihood, hidden=(8,), latent_dim=0)


def test_registry_defaults_are_the_classes_defaults(data):
    """TraceInfoVAE_ELBO() and HamiltonianGuide(...) without settings are the registry's InfoVAE and HVAE."""
    info = build_method("InfoVAE", data.train, data.likelihood, hidden=(8,)).loss
    plain = TraceInfoVAE_ELBO()
    assert (info.alpha, info.lambda_, info.bandwidth, info.kernel) == (plain.alpha, plain.lambda_, plain.bandwidth,
                                                                       plain.kernel)
    assert plain.mmd_weight == 10.0  # not alpha = 0, lambda = 1, which is exactly Trace_ELBO
    hvae = build_method("HVAE", data.train, data.likelihood, hidden=(8,)).guide
    own = HamiltonianGuide(hvae.encoder, hvae.model, latent_dim=1, data=data.train)
    for g in (hvae, own):
        assert (g.num_leapfrog, g.tempering) == (5, "learned")
        assert float(g.beta0.detach()) == pytest.approx(0.5, abs=1e-7)
        assert float(g.step_size.detach()) == pytest.approx(0.1, abs=1e-7)
        assert "raw_beta0" in dict(g.flow.named_parameters())  # learned


def test_train_has_fits_defaults_and_shows_a_bar_named_after_the_method(data, capsys):
    pyro.clear_param_store()
    setup = build_method("VAE", data.train, data.likelihood, hidden=(8,))
    result = setup.train(epochs=2)  # batch_size=100, lr=1e-3, seed=0, num_points from the model
    assert result.steps == 2  # 60 rows, batch 100: one step per epoch
    err = capsys.readouterr().err
    assert "VAE: 100%" in err and "2/2" in err
    assert err.rstrip("\r").endswith("\n")  # the bar is left on screen (tqdm ends it with a newline)
    pyro.clear_param_store()
    again = build_method("VAE", data.train, data.likelihood, hidden=(8,))
    ref = again.train(len(data.train), epochs=2, batch_size=100, lr=1e-3, seed=0, progress=False)
    assert ref.epoch_losses == result.epoch_losses and capsys.readouterr().err == ""


def test_libi_marks_the_stage_of_every_epoch(data):
    pyro.clear_param_store()
    setup = build_method("LiBI", data.train, data.likelihood, hidden=(8,), options={"stage1_fraction": 0.5})
    result = setup.train(epochs=4, batch_size=20, progress=False)
    assert result.epoch_stages == ["stage 1", "stage 1", "stage 2", "stage 2"]
    by_stage = result.losses_by_stage()
    assert list(by_stage) == ["stage 1", "stage 2"]
    assert by_stage["stage 1"] + by_stage["stage 2"] == result.epoch_losses  # the old concatenated list is kept
    with pytest.raises(ValueError, match="num_points=59 but the model's data has 60 rows"):
        setup.train(59, epochs=2)
    plain = build_method("VAE", data.train, data.likelihood, hidden=(8,)).train(epochs=1, progress=False)
    assert plain.epoch_stages == [] and plain.losses_by_stage() == {"": plain.epoch_losses}
