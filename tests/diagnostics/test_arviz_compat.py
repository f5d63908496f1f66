"""The ArviZ version layer; imports only NumPy and ArviZ so it also runs where torch is absent:

    python -m pytest --noconftest tests/test_arviz_compat.py   # e.g. Python 3.12 with ArviZ 1.x
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "_arviz_compat", Path(__file__).resolve().parents[2] / "pyro_mapa" / "diagnostics" / "_arviz_compat.py"
)
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)


def test_pareto_k_sign_convention():
    """Weights with a Pareto(α=2) right tail have k = 1/α = 0.5; their inverse has a light tail."""
    rng = np.random.default_rng(1)
    lw = np.log(rng.pareto(2.0, size=(3, 20000)) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = compat.pareto_k(lw)
        k_inverse = compat.pareto_k(-lw)
    assert np.all(np.abs(k - 0.5) < 0.1)
    assert np.all(k_inverse < 0)


def test_from_groups_builds_all_groups():
    rng = np.random.default_rng(0)
    groups = {
        "posterior": {"c": rng.integers(0, 10, (1, 20, 5)), "z": rng.normal(size=(1, 20, 5, 2))},
        "log_likelihood": {"x": rng.normal(size=(1, 20, 5))},
        "sample_stats": {"log_weight": rng.normal(size=(1, 20, 5))},
        "observed_data": {"x": rng.normal(size=(5, 3))},
    }
    dims = {"c": ["obs"], "z": ["obs", "z_dim"], "x": ["obs", "x_feature"], "log_weight": ["obs"]}
    data = compat.from_groups(groups, dims=dims, coords={})
    assert data["posterior"]["z"].dims == ("chain", "draw", "obs", "z_dim")
    assert data["log_likelihood"]["x"].shape == (1, 20, 5)
    np.testing.assert_array_equal(np.asarray(data["observed_data"]["x"]), groups["observed_data"]["x"])
    np.testing.assert_array_equal(np.asarray(data["sample_stats"]["log_weight"]), groups["sample_stats"]["log_weight"])
