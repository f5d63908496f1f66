"""fit() refuses silent wrong answers: num_points, guide data, checkpoints of other runs, lr, seed; threads."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_mapa import HamiltonianGuide, MeanFieldGuide, NonFiniteLossError, NormalLikelihood, VAEModel, mlp
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit
from pyro_mapa.training.threads import resolve_num_threads, torch_threads


@pytest.fixture(scope="module")
def circle():
    return load_dataset("circle", num_train=60, num_valid=5, num_test=5, seed=0)


def _vae(x, seed=0, guide_data=None):
    torch.manual_seed(seed)
    model = VAEModel(mlp(1, 2, (8,)), x, 1, NormalLikelihood(0.05))
    guide = MeanFieldGuide(mlp(2, 2, (8,)), x if guide_data is None else guide_data, 1)
    return model, guide


# ----------------------------------------------------------------------------------- num_points
def test_num_points_other_than_the_models_rows_is_refused(circle):
    pyro.clear_param_store()
    model, guide = _vae(circle.train)
    with pytest.raises(ValueError, match=r"num_points=30 but the model's data has 60 rows.*pass num_points=60"):
        fit(model, guide, Trace_ELBO(), 30, epochs=1, progress=False)


def test_num_points_left_out_is_read_off_the_model(circle):
    pyro.clear_param_store()
    model, guide = _vae(circle.train)
    res = fit(model, guide, Trace_ELBO(), epochs=2, batch_size=25, progress=False)
    assert res.steps == 2 * 3  # ceil(60 / 25) batches per epoch over all 60 rows
    assert res.encoder_passes_per_point == 1.0  # every row once per epoch: 120 rows for 120 points
    with pytest.raises(ValueError, match="num_points is required"):
        fit(lambda idx: None, lambda idx: None, Trace_ELBO(), epochs=1, progress=False)


def test_num_points_of_a_mapa_run_is_checked_too(circle):
    pyro.clear_param_store()
    s = build_method("MAPA", circle.train, circle.likelihood, hidden=(4,))
    with pytest.raises(ValueError, match="num_points=59 but the model's data has 60 rows"):
        fit(s.model, s.guide, s.loss, 59, epochs=1, progress=False)


# ----------------------------------------------------------------------------------- guide data
def test_guide_on_fewer_rows_than_the_model_is_refused(circle):
    pyro.clear_param_store()
    x = circle.train
    model, guide = _vae(x, guide_data=x[:30])
    with pytest.raises(ValueError, match=r"MeanFieldGuide's data \(its data argument\) has shape \(30, 2\) but the "
                                         r"model's data has shape \(60, 2\)"):
        fit(model, guide, Trace_ELBO(), 60, epochs=1, progress=False)


def test_guide_on_other_values_of_the_same_shape_is_refused(circle):
    pyro.clear_param_store()
    x = circle.train
    other = x.clone()
    other[7] += 1.0
    model, guide = _vae(x, guide_data=other)
    with pytest.raises(ValueError, match=r"differs from the model's data in 1 of 60 rows \(first: row 7\)"):
        fit(model, guide, Trace_ELBO(), epochs=1, progress=False)
    # Equal values in another tensor (a copy) are the same data: accepted.
    model, guide = _vae(x, guide_data=x.clone())
    assert len(fit(model, guide, Trace_ELBO(), epochs=1, progress=False).epoch_losses) == 1


def test_hamiltonian_guide_on_other_data_is_refused_when_built(circle):
    x = circle.train
    model, _ = _vae(x)
    with pytest.raises(ValueError, match=r"HamiltonianGuide's data \(its data argument\) differs"):
        HamiltonianGuide(mlp(2, 2, (4,)), model, latent_dim=1, data=x.flip(0))
    with pytest.raises(ValueError, match=r"HamiltonianGuide's data \(its data argument\) has shape \(30, 2\)"):
        HamiltonianGuide(mlp(2, 2, (4,)), model, latent_dim=1, data=x[:30])
    HamiltonianGuide(mlp(2, 2, (4,)), model, latent_dim=1, data=x.clone())  # equal values: fine


# ----------------------------------------------------------------------------------- checkpoints
def test_resuming_a_mean_field_checkpoint_into_a_hamiltonian_run_is_refused(circle, tmp_path):
    ckpt = tmp_path / "vae.ckpt"
    pyro.clear_param_store()
    vae = build_method("VAE", circle.train, circle.likelihood, hidden=(8,))
    fit(vae.model, vae.guide, vae.loss, epochs=1, progress=False, checkpoint=ckpt)
    pyro.clear_param_store()
    hvae = build_method("HVAE", circle.train, circle.likelihood, hidden=(8,), options={"num_leapfrog": 1})
    with pytest.raises(ValueError, match=r"guide .*HamiltonianGuide: the checkpoint belongs to another architecture"):
        fit(hvae.model, hvae.guide, hvae.loss, epochs=2, progress=False, checkpoint=ckpt, resume=True)
    # A checkpoint that does not record the classes (older files) is refused by its parameter names.
    from pyro_mapa.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ckpt)
    del state["architecture"]
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k not in ("format", "version")})
    pyro.clear_param_store()
    hvae = build_method("HVAE", circle.train, circle.likelihood, hidden=(8,), options={"num_leapfrog": 1})
    with pytest.raises(ValueError, match=r"parameters \['hamiltonian_flow\$\$\$raw_beta0', .*does not hold"):
        fit(hvae.model, hvae.guide, hvae.loss, epochs=2, progress=False, checkpoint=ckpt, resume=True)


# ----------------------------------------------------------------------------------- lr and seed
@pytest.mark.parametrize("lr", [0, 0.0, -1e-3, math.nan, math.inf])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(circle, lr):
    model, guide = _vae(circle.train)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        fit(model, guide, Trace_ELBO(), epochs=1, lr=lr, progress=False)


def test_a_huge_learning_rate_names_epoch_step_and_a_smaller_lr(circle):
    """Both ways a diverged run shows up: an infinite loss, or Pyro's validation of NaN distribution parameters."""
    pyro.clear_param_store()
    model, guide = _vae(circle.train)
    match = r"epoch 0, step \d+ \(gradient step \d+\): .*lr=1e\+06 is probably too large, try a smaller one \(e.g. lr=100000\)"
    with pytest.raises(NonFiniteLossError, match=match):
        fit(model, guide, Trace_ELBO(), epochs=3, batch_size=20, lr=1e6, progress=False)
    # Parameters that turn NaN at the second step (as after a step too far): Pyro's validation of the guide's
    # Normal raises; at the first step, before any update, the message points at the initial parameters instead.
    pyro.enable_validation(True)
    for when, expected in ((1, match.replace(r"step \d+ \(gradient step \d+\)", r"step 1 \(gradient step 1\)")),
                           (0, r"epoch 0, step 0 \(gradient step 0\): the model's or guide's initial parameters")):
        pyro.clear_param_store()
        model, guide = _vae(circle.train)
        calls = []

        def poison(module, inputs, when=when, calls=calls):
            if len(calls) == when:
                with torch.no_grad():
                    module.weight.fill_(math.nan)
            calls.append(1)

        guide.encoder[0].register_forward_pre_hook(poison)
        with pytest.raises(NonFiniteLossError, match=expected + r".*; a distribution got NaN parameters \(Expected "
                           r"parameter loc") as err:
            fit(model, guide, Trace_ELBO(), epochs=3, batch_size=20, lr=1e6, progress=False)
        assert isinstance(err.value.__cause__, ValueError) and "found invalid values" in str(err.value.__cause__)


def test_seed_none_leaves_the_rngs_as_they_are(circle):
    runs = []
    for seed in (None, 3):
        pyro.clear_param_store()
        model, guide = _vae(circle.train)
        pyro.set_rng_seed(3)
        runs.append(fit(model, guide, Trace_ELBO(), epochs=2, batch_size=20, seed=seed, progress=False).epoch_losses)
    assert runs[0] == runs[1]  # seed=None did not reseed: the manual seed 3 made the same run as seed=3
    pyro.clear_param_store()
    model, guide = _vae(circle.train)
    pyro.set_rng_seed(4)
    assert fit(model, guide, Trace_ELBO(), epochs=2, batch_size=20, seed=None, progress=False).epoch_losses != runs[0]
    with pytest.raises(TypeError, match="seed must be an int, or None"):
        fit(model, guide, Trace_ELBO(), epochs=1, seed=1.5, progress=False)


# ----------------------------------------------------------------------------------- threads
def test_fit_trains_on_one_thread_by_default_and_restores_the_setting(circle, monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    seen = []
    model, guide = _vae(circle.train)

    def record(epoch, loss):
        seen.append(torch.get_num_threads())

    try:
        torch.set_num_threads(3)
        pyro.clear_param_store()
        fit(model, guide, Trace_ELBO(), epochs=1, progress=False, callback=record)
        assert seen == [1] and torch.get_num_threads() == 3
        fit(model, guide, Trace_ELBO(), epochs=1, progress=False, callback=record, num_threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 3
        # An explicit environment setting is the user's choice: the current setting is kept.
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        fit(model, guide, Trace_ELBO(), epochs=1, progress=False, callback=record)
        assert seen == [1, 2, 3] and torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        # Restored when training raises, too.
        with pytest.raises(ZeroDivisionError):
            fit(model, guide, Trace_ELBO(), epochs=1, progress=False, callback=lambda e, l: 1 / 0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_thread_policy_arguments(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert resolve_num_threads(None) == 1 and resolve_num_threads(4) == 4
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    assert resolve_num_threads(None) is None and resolve_num_threads(1) == 1
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        resolve_num_threads(0)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        with torch_threads(1.5):
            pass
