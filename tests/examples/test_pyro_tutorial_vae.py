"""examples/pyro_tutorial_vae.py: Pyro's tutorial VAE, its own guide and MAPA, held-out log p(x) checked two ways."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "examples" / "pyro_tutorial_vae.py"
_spec = importlib.util.spec_from_file_location("pyro_tutorial_vae", _PATH)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


@pytest.fixture(scope="module")
def smoke():
    return example.run(epochs=3, num_train=200, num_test=20, is_samples=300, fit_steps=200, grid_points=151)


@pytest.mark.parametrize("method", ["VAE", "MAPA"])
def test_importance_estimate_agrees_with_exact_grid_value(smoke, method):
    r = smoke[method]
    assert r["median_pareto_k"] < 0.7  # most points' weights have a finite variance (k-hat is noisy at S = 300)
    assert abs(r["importance"] - r["exact"]) < 4 * r["importance_se"] + 0.05


def test_both_train_and_mapa_counts_encoder_passes(smoke):
    for method in ("VAE", "MAPA"):
        assert smoke[method]["train_loss"][-1] < smoke[method]["train_loss"][0]
    assert 0 < smoke["MAPA"]["encoder_passes"] <= 3 * 200 * 10 + 200  # unique rows per step, <= B (K + S)


def test_grid_is_converged(smoke):
    """A coarser grid gives the same exact value: the quadrature resolves the posterior."""
    coarse = example.run(epochs=3, num_train=200, num_test=20, is_samples=300, fit_steps=200, grid_points=101)
    for method in ("VAE", "MAPA"):
        assert coarse[method]["exact"] == pytest.approx(smoke[method]["exact"], abs=0.02)
