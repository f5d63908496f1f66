"""Every tutorial runs top to bottom in smoke mode (``CI`` set), as Pyro's test_examples does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
SCRIPTS = sorted(p.name for p in TUTORIALS.glob("*.py"))


def test_every_tutorial_is_listed():
    # The parametrized test below runs every *.py file in tutorials/; these must be among them.
    assert {"quick_start.py", "why_mapa.py", "diagnostics_with_arviz.py", "your_own_data_digits.py", "seed_methods.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_tutorial_runs(script, tmp_path):
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(TUTORIALS.parent)}
    out = subprocess.run([sys.executable, str(TUTORIALS / script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    # Each tutorial asserts its own claims (finite estimates, orderings); a failed assert fails here.
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip(), "a tutorial prints what a reader would see"
