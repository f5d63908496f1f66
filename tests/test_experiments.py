"""The long experiments in experiments/ run end to end in their --quick mode (slow: not in default CI).

Run with: python -m pytest -m slow tests/test_experiments.py
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
        assert all(r["test_ll_is"] == r["test_ll_is"] for r in data["rows"])  # no NaN
    else:
        assert set(data["methods"]) == {"MAPA", "VAE"} and data["table_seconds"] > 0
