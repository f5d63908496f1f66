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


def test_good_k_is_arviz_threshold():
    assert compat.good_k(1000) == min(1 - 1 / 3, 0.7)
    assert compat.good_k(100) == 0.5
    assert compat.good_k(5) == 0.7


def test_elpd_data_and_compare_rank_with_paired_standard_errors():
    """Pointwise values packed as ELPD data: az.compare's elpd, se, elpd_diff and dse are the sums and
    sqrt(n var) of the values and of their paired differences."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=40)
    b = a - 0.5 + 0.2 * rng.normal(size=40)  # worse by 0.5 per point, strongly paired with a
    k = rng.uniform(0, 0.9, size=40)
    ea = compat.elpd_data(a, num_samples=1000, pareto_k=k)
    eb = compat.elpd_data(b, num_samples=0)
    np.testing.assert_allclose(compat.elpd_pointwise(ea), a)
    table = compat.compare({"b": eb, "a": ea})
    assert list(table.index) == ["a", "b"]
    assert abs(table.loc["a", compat.ELPD_COLUMN] - a.sum()) < 1e-9
    assert abs(table.loc["a", "se"] - np.sqrt(40 * a.var())) < 1e-9
    assert abs(abs(table.loc["b", "elpd_diff"]) - (a - b).sum()) < 1e-9  # 0.x: best - model; 1.x: model - best
    assert abs(table.loc["b", "dse"] - np.sqrt(40 * (a - b).var())) < 1e-9
    assert table.loc["b", "dse"] < 0.5 * table.loc["b", "se"]  # pairing cancels the shared variation
    # k above ArviZ's threshold for 1000 draws (0.667) sets the warning; exact values carry none.
    assert bool(ea["warning"]) and not bool(eb["warning"])
    assert ea["good_k"] == compat.good_k(1000)
    np.testing.assert_array_equal(np.asarray(ea["pareto_k"]), k)
