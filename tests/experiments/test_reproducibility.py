"""Provenance, determinism and ``reproduce --check``."""

import importlib.metadata
import importlib.util
import json
import random
import re
import subprocess
from pathlib import Path

import pytest
import torch

from pyro_mapa.cli import main
from pyro_mapa_experiments import provenance as prov_mod
from pyro_mapa_experiments.check import _job_from_record, check_reproduction
from pyro_mapa_experiments.provenance import (
    PROVENANCE_SCHEMA,
    git_state,
    load_raw_results,
    max_abs_differences,
    numeric_leaves,
    provenance,
)
from pyro_mapa_experiments.reproduce import ReproductionSettings, job_seed, run_job, run_reproduction

TINY = dict(
    datasets=("circle",), methods=("VAE", "MAPA"), draws=1, restarts=2, epochs=2, batch_size=20, num_train=60,
    num_valid=30, num_test=40, extra_mapa=(), sweep_mapa=((1, 0),), sweep_iwae=(), quadrature_points=201,
    grid_size=8, jobs=1,
)


def _numbers(path, drop=("jobs",)):
    """Every number of a results file except timings, provenance and the named keys."""
    return {k: v for k, v in numeric_leaves(json.loads(path.read_text())).items() if k.rsplit(".", 1)[-1] not in drop}


def test_two_runs_write_identical_numbers(tmp_path):
    """Same settings twice, the second after disturbing every global RNG and the thread count,
    and with a process pool of two workers instead of none: every number is identical."""
    run_reproduction(ReproductionSettings(**TINY), tmp_path / "a", progress=False)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(12345)
        torch.rand(100)
        random.seed(7)
        torch.set_num_threads(2)
        run_reproduction(ReproductionSettings(**{**TINY, "jobs": 2}), tmp_path / "b", progress=False)
        assert torch.get_num_threads() == 2  # a job's thread setting does not leak into the caller
    finally:
        torch.set_num_threads(threads)
    for name in ("paper_reproduction.json", "raw_results.json"):
        a, b = _numbers(tmp_path / "a" / name), _numbers(tmp_path / "b" / name)
        assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
        assert len(a) > 15
    a = _numbers(tmp_path / "a" / "paper_reproduction.json")
    assert a["datasets.circle.VAE.test_kl_mean"][0] != a["datasets.circle.MAPA.test_kl_mean"][0]
    raw = json.loads((tmp_path / "a" / "raw_results.json").read_text())
    seeds = [[r["seed"] for r in rec["restarts"]] for rec in raw["results"]]
    assert seeds[0] == [job_seed("circle", 0, "VAE", 0), job_seed("circle", 0, "VAE", 1)]
    assert seeds[1] == [job_seed("circle", 0, "MAPA", 0), job_seed("circle", 0, "MAPA", 1)]


def test_results_record_their_provenance(tmp_path):
    run_reproduction(ReproductionSettings(**{**TINY, "methods": ("VAE",)}), tmp_path, progress=False,
                     command="pyro-mapa reproduce --tiny")
    summary = json.loads((tmp_path / "paper_reproduction.json").read_text())
    raw = json.loads((tmp_path / "raw_results.json").read_text())
    for p in (summary["provenance"], raw["provenance"]):
        assert p["schema"] == PROVENANCE_SCHEMA
        assert p["command"] == "pyro-mapa reproduce --tiny"
        assert p["jobs"] == 1 and p["threads"]["threads_per_job"] == 1
        assert p["settings"]["epochs"] == 2 and p["settings"]["methods"] == ["VAE"]
        assert p["libraries"]["torch"] == importlib.metadata.version("torch")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", p["date_utc"])
    assert raw["settings"] == summary["provenance"]["settings"]
    loaded_prov, settings, records = load_raw_results(tmp_path)
    assert loaded_prov == raw["provenance"] and settings["num_train"] == 60 and len(records) == 2
    made = _tables_module().make_tables(tmp_path)  # the docs' tables from a fresh run's files
    vae = summary["datasets"]["circle"]["VAE"]
    assert f"| circle | **{vae['test_kl_mean']:.3f} ± {vae['test_kl_se']:.3f}** |" in made["main"]  # the only one
    commit = (raw["provenance"]["git"]["commit"] or "unknown")[:10]
    assert f"| paper_reproduction.json | {commit}" in made["provenance"]


def test_provenance_is_the_code_at_the_start_of_the_run(tmp_path, monkeypatch):
    """A commit made while the jobs run does not relabel them: the start's state is kept, the end's added."""
    from pyro_mapa_experiments import reproduce

    state = {"commit": "a" * 40}

    def git(*a):
        return {"commit": state["commit"], "dirty": False, "changes_sha256": None, "untracked_package_files": 0}

    real_run_all = reproduce._run_all

    def run_all_then_commit(*a, **k):
        out = real_run_all(*a, **k)
        state["commit"] = "b" * 40
        return out

    monkeypatch.setattr(prov_mod, "git_state", git)
    monkeypatch.setattr(reproduce, "git_state", git)
    monkeypatch.setattr(reproduce, "_run_all", run_all_then_commit)
    run_reproduction(ReproductionSettings(**{**TINY, "methods": ("VAE",), "restarts": 1}), tmp_path, progress=False)
    prov = json.loads((tmp_path / "raw_results.json").read_text())["provenance"]
    assert prov["git"]["commit"] == "a" * 40 and prov["git_at_end"]["commit"] == "b" * 40


def test_provenance_fields_and_git():
    p = provenance({"a": (1, 2)}, jobs=3, threads_per_job=1, command=["pyro-mapa", "x y"])
    assert set(p) == {"schema", "package", "git", "libraries", "python", "machine", "threads", "jobs", "settings",
                      "date_utc", "command"}
    assert p["settings"] == {"a": [1, 2]} and p["jobs"] == 3 and p["command"] == "pyro-mapa 'x y'"
    assert set(p["libraries"]) >= {"torch", "pyro-ppl", "numpy", "arviz", "zuko"}
    assert p["threads"]["torch_threads"] == torch.get_num_threads()
    root = Path(prov_mod.__file__).resolve().parents[2]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root)
    if head.returncode == 0:  # a source checkout
        assert p["git"]["commit"] == head.stdout.strip()
        assert isinstance(p["git"]["dirty"], bool)


def test_git_state_without_git(tmp_path, monkeypatch):
    """No git on PATH, or a package directory outside any repository: no commit, no crash."""
    (tmp_path / "__init__.py").write_text("")
    assert git_state(tmp_path)["commit"] is None
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_state()["commit"] is None and git_state()["dirty"] is None
    assert provenance()["git"]["commit"] is None


def test_git_state_counts_code_not_regenerated_results(tmp_path):
    """A regeneration pass rewrites tracked results files step by step: they do not make the code dirty;
    a changed source file, or an untracked file in the package, does."""
    import shutil

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    if shutil.which("git") is None:
        pytest.fail("git is needed to test git_state")
    pkg = tmp_path / "pkg"
    for path in (pkg / "__init__.py", pkg / "core.py", tmp_path / "docs" / "results" / "a.json",
                 tmp_path / "benchmarks" / "results" / "b.json", tmp_path / "scripts" / "run.py"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_state(pkg)
    assert clean["commit"] and clean["dirty"] is False and clean["changes_sha256"] is None
    (tmp_path / "docs" / "results" / "a.json").write_text("1\n")
    (tmp_path / "benchmarks" / "results" / "b.json").write_text("1\n")
    (tmp_path / "docs" / "results" / "new.json").write_text("1\n")
    assert git_state(pkg)["dirty"] is False
    (tmp_path / "scripts" / "run.py").write_text("1\n")  # code outside the package counts
    first = git_state(pkg)
    assert first["dirty"] is True and first["changes_sha256"]
    (tmp_path / "scripts" / "run.py").write_text("0\n")
    (pkg / "extra.py").write_text("")
    assert git_state(pkg)["dirty"] is True and git_state(pkg)["untracked_package_files"] == 1


def test_job_seed_is_a_fixed_function_of_the_job():
    assert job_seed("circle", 0, "MAPA", 0) == 596493417  # changing the scheme changes every result
    seeds = {job_seed(d, draw, m, r) for d in ("circle", "figure8") for draw in (0, 1) for m in ("VAE", "MAPA")
             for r in (-1, 0, 1)}
    assert len(seeds) == 24 and all(0 <= s < 2**31 for s in seeds)


def test_numeric_leaves_and_differences():
    a = {"x": 1.0, "r": [{"v": 1.0}, {"v": 2.0}], "seconds_per_epoch": 5.0, "provenance": {"n": 1}, "s": "t"}
    assert numeric_leaves(a) == {"x": [1.0], "r[].v": [1.0, 2.0]}
    b = {"x": 1.0, "r": [{"v": 1.0}, {"v": 2.5}], "seconds_per_epoch": 9.0, "new": 3.0}
    assert max_abs_differences(a, b) == {"x": 0.0, "r[].v": 0.5}
    assert max_abs_differences(a, {"x": float("nan"), "r": []}) == {"x": float("inf"), "r[].v": float("inf")}


def _fake_run(tmp_path, commit="a" * 40, changes=None):
    """A recorded run (two jobs) without training, for the check's verdict logic."""
    records = []
    for method in ("VAE", "MAPA"):
        records.append({
            "dataset": "circle", "draw": 0, "method": method, "label": method, "kind": "main", "num_top": None,
            "num_samples": None, "test_ll": -0.5, "test_kl": 0.3, "best_restart": 0,
            "restarts": [{"restart": 0, "seed": job_seed("circle", 0, method, 0), "valid_ll": -0.6,
                          "final_loss": 1.0, "seconds_per_epoch": 0.1}],
            "job": {"dataset": "circle", "draw": 0, "method": method, "label": method, "kind": "main"},
        })
    prov = provenance(TINY, jobs=1, threads_per_job=1)
    prov["git"] = {"commit": commit, "dirty": changes is not None, "changes_sha256": changes}
    (tmp_path / "raw_results.json").write_text(json.dumps({"provenance": prov, "settings": TINY, "results": records}))
    return records


@pytest.fixture
def replay(monkeypatch):
    """Stands in for the rerun: returns the untampered records, and pins the current commit."""
    from pyro_mapa_experiments import check

    state = {"records": None, "commit": "a" * 40}
    monkeypatch.setattr(check, "_run_all", lambda todo, jobs, progress: [
        next(r for r in state["records"] if r["method"] == job["method"]) for job in todo])
    monkeypatch.setattr(prov_mod, "git_state", lambda *a: {"commit": state["commit"], "dirty": False,
                                                           "changes_sha256": None, "untracked_package_files": 0})
    return state


def test_check_fails_on_a_tampered_number_from_other_code(tmp_path, replay, capsys):
    replay["records"] = json.loads(json.dumps(_fake_run(tmp_path)))
    assert main(["reproduce", "--check", str(tmp_path), "--sample", "2", "--no-progress"]) == 0
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and report["largest_difference"] == 0.0 and report["same_code"]
    raw = json.loads((tmp_path / "raw_results.json").read_text())
    raw["results"][1]["restarts"][0]["valid_ll"] += 1e-3  # the tampered number: twice the tolerance
    (tmp_path / "raw_results.json").write_text(json.dumps(raw))
    # Same code, same environment: a difference means determinism is broken.
    assert main(["reproduce", "--check", str(tmp_path), "--sample", "2", "--no-progress"]) == 1
    assert "determinism is broken" in capsys.readouterr().out
    replay["commit"] = "b" * 40  # other code: stale results
    assert main(["reproduce", "--check", str(tmp_path), "--sample", "2", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "regenerate" in out and "restarts[].valid_ll" in out
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["metrics"]["restarts[].valid_ll"]["max_abs_difference"] == pytest.approx(1e-3)
    assert report["metrics"]["test_ll"]["max_abs_difference"] == 0.0
    # Within the tolerance, other code passes.
    assert main(["reproduce", "--check", str(tmp_path), "--tolerance", "2e-3", "--no-progress"]) == 0


def test_check_only_warns_for_the_same_code_elsewhere(tmp_path, replay):
    replay["records"] = json.loads(json.dumps(_fake_run(tmp_path)))
    raw = json.loads((tmp_path / "raw_results.json").read_text())
    raw["results"][0]["test_ll"] += 0.01
    raw["provenance"]["libraries"]["torch"] = "0.0.1"
    (tmp_path / "raw_results.json").write_text(json.dumps(raw))
    report = check_reproduction(tmp_path, sample=2)
    assert report["passed"] and report["same_code"]
    assert report["environment_differences"] == [f"torch 0.0.1 -> {importlib.metadata.version('torch')}"]
    assert "different environment" in report["verdict"]


def test_check_replays_legacy_records(tmp_path):
    """Results written before provenance: settings from paper_reproduction.json, seeds 1000 * draw + restart."""
    rec = {"dataset": "circle", "draw": 2, "method": "IWAE", "label": "IWAE S=5", "kind": "sweep", "num_top": None,
           "num_samples": 5, "restarts": [{"restart": 0, "valid_ll": 0.0}]}
    (tmp_path / "raw_results.json").write_text(json.dumps([rec]))
    (tmp_path / "paper_reproduction.json").write_text(json.dumps({"settings": {**TINY, "restarts": 3,
                                                                               "wall_clock_seconds": 1.0}}))
    prov, settings, records = load_raw_results(tmp_path)
    assert prov is None
    job = _job_from_record(records[0], settings)
    assert job["seeds"] == [2000] and job["particles"] == 5 and job["settings"]["restarts"] == 1
    with pytest.raises(ValueError, match="raw_results.json does not exist"):
        load_raw_results(tmp_path / "nowhere")


def test_run_job_replays_the_seeds_it_is_given():
    job = {"dataset": "circle", "draw": 0, "method": "VAE", "label": "VAE", "kind": "main",
           "settings": prov_mod.jsonable(ReproductionSettings(**{**TINY, "restarts": 1}))}
    a, b, c = (run_job({**job, "seeds": [s]}) for s in (2000, 2000, 2001))
    assert a["restarts"][0]["seed"] == 2000 and a["restarts"][0]["valid_ll"] == b["restarts"][0]["valid_ll"]
    assert c["restarts"][0]["valid_ll"] != a["restarts"][0]["valid_ll"]
    assert run_job(job)["restarts"][0]["seed"] == job_seed("circle", 0, "VAE", 0)


@pytest.mark.slow
def test_check_reruns_a_recorded_job_exactly(tmp_path, capsys):
    """A real tiny run, then --check on a one-job sample: same code and machine, difference exactly 0."""
    out = tmp_path / "run"
    assert main(["reproduce", "--quick", "--methods", "VAE", "--epochs", "2", "--jobs", "1", "--output", str(out),
                 "--no-progress"]) == 0
    assert main(["reproduce", "--check", str(out), "--sample", "1", "--seed", "3", "--jobs", "1"]) == 0
    report = json.loads((out / "check.json").read_text())
    assert report["sample"] == 1 and report["largest_difference"] == 0.0 and report["passed"]
    assert "test_kl" in report["metrics"] and "restarts[].valid_ll" in report["metrics"]
    assert "PASS" in capsys.readouterr().out


def test_reproduce_help_documents_check(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--check DIR" in out and "--tolerance" in out and "--sample" in out


def _tables_module():
    path = Path(__file__).resolve().parents[2] / "scripts" / "make_results_tables.py"
    spec = importlib.util.spec_from_file_location("make_results_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_tables_are_generated_from_the_committed_json(tmp_path):
    """Every marked table of docs/results.md, reliability.md (mutation), benchmarks.md and scaling.md is
    what the script makes from docs/results/*.json and benchmarks/results/*.json."""
    tables = _tables_module()
    docs = Path(__file__).resolve().parents[2] / "docs" / "results.md"
    for name, expected in (("results.md", {"main", "passes", "digits", "provenance", "regeneration"}),
                           ("reliability.md", {"mutation"}),
                           ("benchmarks.md", {"step_time", "big_equal", "big_decoder"}),
                           ("scaling.md", {"table_build", "approx_neighbors"})):
        assert tables.main(["--check", str(docs.with_name(name))]) == 0, name
        assert expected <= set(tables.splice(docs.with_name(name).read_text(), tables.make_tables())[1]), name
    text = docs.read_text()
    # A number changed by hand in a marked table is caught.
    edited = tmp_path / "results.md"
    row = tables.make_tables()["main"].splitlines()[2]  # figure-8: "| figure8 | 1.565 ± 0.553 | ..."
    assert row.startswith("| figure8 | ") and row in text
    first = row.split(" | ")[1]
    changed = first[:-1] + str((int(first[-1]) + 1) % 10)
    edited.write_text(text.replace(row, row.replace(first, changed, 1)))
    assert tables.main(["--check", str(edited)]) == 1
    assert tables.main(["--splice", str(edited)]) == 0 and edited.read_text() == text


def test_tables_take_new_methods_from_the_json(tmp_path):
    """A regenerated file with more methods (here InfoVAE and HVAE) gets their columns and rows, unchanged code."""
    tables = _tables_module()
    src = Path(__file__).resolve().parents[2] / "docs" / "results"
    rep = json.loads((src / "paper_reproduction.json").read_text())
    for name, entry in rep["datasets"].items():
        entry["InfoVAE"] = {**entry["VAE"], "test_kl_mean": 0.001, "test_kl_se": 0.0005}
    dig = json.loads((src / "digits.json").read_text())
    dig["rows"].append({**dig["rows"][0], "method": "HVAE", "test_ll_quadrature": 0.0})
    dig.pop("provenance", None)  # as a file written before provenance was recorded
    (tmp_path / "paper_reproduction.json").write_text(json.dumps(rep))
    (tmp_path / "digits.json").write_text(json.dumps(dig))
    made = tables.make_tables(tmp_path)
    header = made["main"].splitlines()[0]
    assert header.endswith("| MAPA K=20 S=20 | InfoVAE |")
    f8 = {m: f"{v['test_kl_mean']:.3f} ± {v['test_kl_se']:.3f}" for m, v in rep["datasets"]["figure8"].items()}
    best = min(("VAE", "IWAE", "MAPA"), key=lambda m: rep["datasets"]["figure8"][m]["test_kl_mean"])
    f8[best] = f"**{f8[best]}**"  # bold among VAE/IWAE/MAPA only, not the better InfoVAE
    assert f"| figure8 | {f8['VAE']} | {f8['IWAE']} | {f8['MAPA']} |" in made["main"]
    assert made["main"].splitlines()[2].endswith("| 0.001 ± 0.001 |")
    assert "| InfoVAE | 1.00 | 1.00 | 2.00 |" in made["passes"]
    r0 = dig["rows"][0]
    assert (f"| {r0['data']} | {r0['latent_dim']} | HVAE | {r0['test_ll_is']:.2f} ± {r0['test_ll_is_se']:.2f} | "
            f"{r0['mc_stderr_mean']:.3f} | **0.00** |") in made["digits"]
    assert "highdim" not in made and "| digits.json | not recorded |" in made["provenance"]
    commit = rep["provenance"]["git"]["commit"][:10]
    assert f"| paper_reproduction.json | {commit}" in made["provenance"]
    with_info = tables.make_tables(tmp_path, bold_among=("VAE", "InfoVAE"))
    assert "**0.001 ± 0.001**" in with_info["main"]


def test_benchmark_regeneration_and_check_tables_from_their_json():
    """The benchmark, regeneration and check tables print the JSON's numbers in the right columns."""
    tables = _tables_module()
    step = {"objective": "X", "ms_per_step": 3.026, "seconds_per_epoch": 0.0303, "vs_plain_mapa": 1.65,
            "vs_plain_mapa_range": [1.45, 1.94], "vs_renyi": 1.0, "vs_renyi_range": [1.0, 1.0]}
    assert tables.step_time_table({"rows": [step]}).splitlines()[2] == "| X | 3.03 | 0.030 | 1.65 (1.45-1.94) | 1.00 |"
    ratio = {"median": 0.954, "range": [0.93, 1.09]}
    row = {"objective": "M", "wall_ms_early": 61.83, "wall_ms_late": 67.12, "wall_late_over_early": ratio,
           "wall_vs_iwae10_early": {"median": 1.0, "range": [1.0, 1.0]}, "wall_vs_iwae10_late": ratio,
           "passes_per_point_late": [5.65, 5.64]}
    big = {"regimes": [{"label": "other", "rows": []}, {"label": "equal", "rows": [row, {**row, "objective": "I",
                                                                                      "passes_per_point_late": None}]}]}
    lines = tables.big_networks_table(big, "equal").splitlines()
    assert lines[2] == "| M | 61.8 | 67.1 | 0.95 (0.93-1.09) | 1.00 | 0.95 (0.93-1.09) | 5.65 + 5.64 |"
    assert lines[3].endswith("| 0.95 (0.93-1.09) | |") and len(lines) == 4
    times = {"a": {"seconds": 30, "commit": "c" * 40, "command": "x", "finished_utc": "2026-01-01T10:02:00+00:00"},
             "b": {"seconds": 90, "commit": "c" * 40, "command": "y", "finished_utc": "2026-01-01T10:00:00+00:00"}}
    regen = tables.regeneration_table(times).splitlines()
    assert regen[2] == "| b | `y` | cccccccccc | 90 | 1.5 | 2026-01-01 10:00 |"  # run order, not name order
    assert regen[3] == "| a | `x` | cccccccccc | 30 | 0.5 | 2026-01-01 10:02 |"
    assert regen[4] == "| **total** | | | **120** | **2.0** | |"
    report = {"sample": 1, "of": 9, "seed": 4, "jobs": [{"job": "circle draw 0 VAE (main)"}],
              "recorded": {"commit": "a" * 40, "dirty": True}, "current": {"commit": "b" * 40, "dirty": False},
              "largest_difference": 0.0007, "passed": False, "verdict": "differ"}
    assert tables.checks_table({"r/check.json": report}).splitlines()[2] == (
        "| r/check.json | 1 of 9 (sample seed 4) | circle draw 0 VAE (main) | aaaaaaaaaa (dirty) | bbbbbbbbbb | "
        "0.0007 | FAIL: differ |")


def test_compare_results_script(tmp_path, capsys):
    """scripts/compare_results.py: identical numbers pass, a changed number fails at tolerance 0, timings
    are skipped, and a file is read from git history as REV:PATH."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "compare_results.py"
    spec = importlib.util.spec_from_file_location("compare_results", path)
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    old = {"results": [{"test_kl": 0.25, "seconds_per_epoch": 0.1}], "provenance": {"git": {"commit": "a"}}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps({**old, "results": [{"test_kl": 0.25, "seconds_per_epoch": 9.0, "new": 1.0}]}))
    assert cmp.main([str(a), str(b)]) == 0
    assert "largest difference 0" in capsys.readouterr().out
    b.write_text(json.dumps({**old, "results": [{"test_kl": 0.2504}]}))
    assert cmp.main([str(a), str(b)]) == 1
    assert "results[].test_kl" in capsys.readouterr().out
    assert cmp.main([str(a), str(b), "--tolerance", "5e-4"]) == 0
    root = path.parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root)
    if head.returncode == 0:  # a source checkout: REV:PATH reads the committed file
        assert set(cmp.load("HEAD:docs/results/paper_reproduction.json")) >= {"datasets", "provenance"}
    with pytest.raises(SystemExit, match="cannot read"):
        cmp.load("no-such-revision:docs/results/paper_reproduction.json")
