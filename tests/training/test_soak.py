"""Soak test (slow, not in default CI): a run killed and resumed several times ends where an uninterrupted run ends.

Run with: python -m pytest -m slow tests/test_soak.py
"""

import json
import subprocess
import sys
import time

import pytest

SCRIPT = r"""
import json, sys, pyro, torch
torch.set_num_threads(1)
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit
ckpt, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = load_dataset("figure8", num_train=400, num_valid=5, num_test=5, seed=1)
setup = build_method("MAPA", ds.train, ds.likelihood, seed=2)
res = fit(setup.model, setup.guide, setup.loss, 400, epochs=epochs, batch_size=50, seed=2, progress=False,
          checkpoint=ckpt if ckpt != "-" else None, resume=ckpt != "-")
params = {k: v.detach().reshape(-1).tolist() for k, v in pyro.get_param_store().named_parameters()}
json.dump({"losses": res.epoch_losses, "params": params}, open(out, "w"))
"""


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    epochs = 60
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref = tmp_path / "ref.json"
    subprocess.run([sys.executable, str(script), "-", str(ref), str(epochs)], check=True)
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "out.json"
    kills = 0
    for delay in (3.0, 4.0, 5.0, 6.0):
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), str(epochs)])
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kills += 1
    subprocess.run([sys.executable, str(script), str(ckpt), str(out), str(epochs)], check=True)
    assert kills >= 2, "the run finished before it could be interrupted; raise epochs"
    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert len(b["losses"]) == epochs
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-5
    for k in a["params"]:
        assert max(abs(x - y) for x, y in zip(a["params"][k], b["params"][k])) < 1e-5
