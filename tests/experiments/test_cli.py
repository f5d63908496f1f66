import json
import math
import subprocess
import sys
import time

import pytest

from pyro_mapa.cli import main, run_demo
from pyro_mapa_experiments.reproduce import ReproductionSettings


def test_demo_runs_and_reports_finite_numbers():
    res = run_demo(epochs=2, num_train=200, num_test=100, progress=False)
    assert set(res) == {"MAPA", "VAE", "truth"}
    for name in ("MAPA", "VAE"):
        r = res[name]
        assert math.isfinite(r["test_ll"]) and math.isfinite(r["final_loss_per_point"])
        # KL is the truth minus the learned model, consistently.
        assert r["test_kl"] == pytest.approx(res["truth"]["test_ll"] - r["test_ll"])
        assert r["passes_per_point_per_step"] > 0
    assert res["VAE"]["passes_per_point_per_step"] == pytest.approx(2.0)  # one encoder + one decoder row


def test_demo_trains_and_evaluates_on_one_thread_and_restores_the_setting(monkeypatch):
    """The demo's thread policy: one thread unless told otherwise (--threads, OMP_NUM_THREADS), restored after."""
    import torch

    import pyro_mapa.methods as methods
    import pyro_mapa.training as training

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    real_fit, real_learned = training.fit, methods.MethodSetup.learned_model

    def fit(*args, **kwargs):
        seen.append(("fit", torch.get_num_threads()))
        return real_fit(*args, **kwargs)

    def learned_model(self, *args, **kwargs):
        seen.append(("eval", torch.get_num_threads()))
        return real_learned(self, *args, **kwargs)

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(methods.MethodSetup, "learned_model", learned_model)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_demo(epochs=1, num_train=100, num_test=20, progress=False)
        assert seen == [("fit", 1), ("eval", 1)] * 2 and torch.get_num_threads() == 2
        seen.clear()
        torch.set_num_threads(1)
        run_demo(epochs=1, num_train=100, num_test=20, progress=False, num_threads=2)
        assert seen == [("fit", 2), ("eval", 2)] * 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_reproduce_quick_writes_schema_and_figures(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["reproduce", "--quick", "--datasets", "circle", "--epochs", "2", "--jobs", "1",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "paper_reproduction.json").read_text())
    assert set(data) >= {"datasets", "settings", "provenance", "reference"}
    entry = data["datasets"]["circle"]
    assert set(entry) >= {"VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive"}
    for method in ("VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive"):
        row = entry[method]
        for key in ("test_kl_mean", "test_kl_se", "test_ll_mean", "passes_per_point_per_step", "seconds_per_epoch"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (method, key)
    assert entry["IWAE"]["passes_per_point_per_step"] == pytest.approx(11.0)  # 1 encoder + 10 decoder rows
    assert data["settings"]["epochs"] == 2 and data["settings"]["draws"] == 1
    assert data["settings"]["is_quick"] is True  # a quick run says so in its JSON (and on its figures)
    assert data["provenance"]["command"].startswith("pyro-mapa reproduce --quick")
    # The sweep points equal to a main job (MAPA K=5 S=5, IWAE S=10, one restart) are that job.
    sweep = {r["label"]: r for r in data["sweep"]["circle"]}
    assert sweep["MAPA K=5 S=5"]["test_kl"] == entry["MAPA"]["test_kl_mean"]
    assert sweep["IWAE S=10"]["test_kl"] == entry["IWAE"]["test_kl_mean"]
    raw = json.loads((out / "raw_results.json").read_text())
    assert set(raw) == {"provenance", "settings", "results"} and len(raw["results"]) == 9
    # non_identifiability.png needs circle or absolute_value with a VAE: circle is here.
    for fig in ("densities.png", "kl_vs_passes.png", "posterior_trends.png", "non_identifiability.png"):
        assert (out / fig).stat().st_size > 1000
    assert "circle" in data["non_identifiability"]
    # 20 gradient steps learn nothing, and the output says so.
    printed = capsys.readouterr().out
    gauss = data["reference"]["circle"]["gaussian_fit_test_kl_mean"]
    assert all(entry[m]["test_kl_mean"] > gauss for m in entry)
    assert "QUICK RUN" in printed and "NOT LEARNED: VAE on circle, IWAE on circle" in printed


@pytest.mark.slow
def test_reproduce_quick_learns_in_under_a_minute(tmp_path, capsys):
    """The default --quick run (circle, 1,000 steps per method) beats a Gaussian fit with every method."""
    start = time.perf_counter()
    assert main(["reproduce", "--quick", "--output", str(tmp_path), "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    data = json.loads((tmp_path / "paper_reproduction.json").read_text())
    gauss = data["reference"]["circle"]["gaussian_fit_test_kl_mean"]
    kls = {m: r["test_kl_mean"] for m, r in data["datasets"]["circle"].items()}
    assert set(kls) == {"VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive"}
    assert all(kl < 0.75 * gauss for kl in kls.values()), (kls, gauss)
    assert "NOT LEARNED" not in capsys.readouterr().out
    print(f"--quick: {elapsed:.0f} s, test KLs {kls}, Gaussian fit {gauss:.3f}")


def test_reproduce_rejects_bad_method_options(tmp_path):
    with pytest.raises(SystemExit, match="--method-options must be JSON"):
        main(["reproduce", "--quick", "--method-options", "{VAE", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="must map method names to objects"):
        main(["reproduce", "--quick", "--method-options", '{"VAE": 3}', "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="methods: unknown"):
        ReproductionSettings(methods=("VAE", "GAN"))


def test_cli_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit, match="unknown data set"):
        main(["reproduce", "--quick", "--datasets", "moons", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown method"):
        main(["reproduce", "--quick", "--methods", "GAN", "--output", str(tmp_path)])


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "pyro_mapa", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "reproduce" in out.stdout


def test_only_the_quick_settings_say_quick():
    from pyro_mapa_experiments.provenance import jsonable
    from pyro_mapa_experiments.reproduce import ReproductionSettings

    assert jsonable(ReproductionSettings())["is_quick"] is False
    assert jsonable(ReproductionSettings.quick())["is_quick"] is True
