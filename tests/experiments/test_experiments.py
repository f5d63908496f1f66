"""The long experiments in experiments/ run end to end in their --quick mode (slow: not in default CI).

Run with: python -m pytest -m slow tests/test_experiments.py
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["digits.py", "synthetic_highdim.py"])
def test_experiment_quick_mode(script, tmp_path):
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--quick", "--output", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    if script == "digits.py":
        assert len(data["rows"]) == 12  # 2 data kinds x 2 latent dims x 3 methods
        assert all(math.isfinite(r["test_ll_is"]) for r in data["rows"])
    else:
        assert set(data["methods"]) == {"MAPA", "VAE"} and data["table_seconds"] > 0


def test_highdim_truth_quadrature_has_converged():
    """The 64-D experiment's exact log p_true: 201² and 401² grid nodes agree (docs/results.md)."""
    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import synthetic_highdim as hd
    finally:
        sys.path.pop(0)
    from pyro_mapa.evaluation import grid_log_likelihood

    f = hd.true_decoder()
    x = hd.draw(f, 5, 2).double()
    f64 = lambda z: f(z.float()).double()  # noqa: E731
    lik = hd.NormalLikelihood(hd.SIGMA)
    a, b = (grid_log_likelihood(x, f64, hd.std_normal_log_prob, lik, [-6, -6], [6, 6], n) for n in (201, 401))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
