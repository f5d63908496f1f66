"""LiBI's benchmarks (:mod:`pyro_mapa_experiments.libi_benchmarks`): jobs, selection, one tiny run end to end,
its networks, and ``reproduce --check`` on a recorded run."""

import json
import math
import shutil
from collections import Counter

import pytest
import torch
from torch import nn

from pyro_mapa.errors import NonFiniteLossError
from pyro_mapa_experiments import libi_benchmarks as lb
from pyro_mapa_experiments.check import check_reproduction
from pyro_mapa.datasets import LIBI_DATASET_NAMES, load_dataset
from pyro_mapa_experiments.libi_benchmarks import (
    LIBI_GRIDS,
    LIBI_METHODS,
    HalfSigmoidCubeRoot,
    LiBIBenchmarkSettings,
    make_jobs,
    paper_networks,
    run_job,
    run_libi_benchmarks,
    summarize,
)

TINY = dict(methods=("VAE",), epochs=2, is_samples=50, flow_steps=20, model_samples=50)
TIMINGS = {"train_seconds", "seconds_per_epoch"}
VAE_METRICS = {"valid_ll", "test_ll", "test_kl", "true_test_ll", "mmd2", "passes_per_point", "steps",
               "final_loss", "paper_is_ll", "paper_is_se", "test_elbo", "posterior_kl", "aggregate_kl"}


def _grid_size(method):
    return len(LIBI_GRIDS.get(method, [{}]))


# --- jobs ------------------------------------------------------------------------------------------


def test_make_jobs_counts_grids_times_restarts():
    methods = ("VAE", "beta-VAE", "LiBI")
    assert [_grid_size(m) for m in methods][0] == 1 and min(_grid_size(m) for m in methods[1:]) >= 2
    s = LiBIBenchmarkSettings(datasets=("linear_jtex", "mobius"), methods=methods, restarts=3, mlp_restarts=2)
    jobs = make_jobs(s)
    grid = sum(_grid_size(m) for m in methods)
    assert len(jobs) == 2 * grid * (3 + 2)  # paper setting: `restarts`; mlp setting: `mlp_restarts`
    restarts = {}
    for j in jobs:
        key = (j["dataset"], j["setting"], j["method"], json.dumps(j["options"], sort_keys=True))
        restarts.setdefault(key, []).append(j["restart"])
    assert len(restarts) == 2 * 2 * grid
    for (_, setting, method, options), got in restarts.items():
        assert sorted(got) == list(range(3 if setting == "paper" else 2))
        assert json.loads(options) in LIBI_GRIDS.get(method, [{}])
    assert all(j["epochs"] == s.epochs and j["lr"] == s.lr and j["is_samples"] == s.is_samples for j in jobs)
    # the whole default run
    full = make_jobs(LiBIBenchmarkSettings())
    assert len(full) == len(LIBI_DATASET_NAMES) * (2 + 1) * sum(_grid_size(m) for m in LIBI_METHODS)


def test_quick_jobs_use_each_grids_first_value():
    jobs = make_jobs(LiBIBenchmarkSettings.quick())
    assert len(jobs) == len(LIBI_METHODS)  # one data set, the paper's networks, one restart, one grid value
    for j in jobs:
        assert (j["dataset"], j["setting"], j["restart"]) == ("linear_jtex", "paper", 0)
        assert j["options"] == LIBI_GRIDS.get(j["method"], [{}])[0]
    restarts = make_jobs(LiBIBenchmarkSettings.quick(methods=("beta-VAE",), restarts=2))
    assert [(j["options"], j["restart"]) for j in restarts] == [(LIBI_GRIDS["beta-VAE"][0], 0),
                                                                  (LIBI_GRIDS["beta-VAE"][0], 1)]


def test_job_seeds_are_distinct_stable_and_json():
    s = LiBIBenchmarkSettings(restarts=2, mlp_restarts=2)
    jobs = make_jobs(s)
    seeds = [j["seed"] for j in jobs]
    assert len(set(seeds)) == len(jobs)
    assert all(isinstance(x, int) and 0 <= x < 2**31 for x in seeds)
    assert make_jobs(LiBIBenchmarkSettings(restarts=2, mlp_restarts=2)) == jobs
    # a job's seed is its identity's, not its position's: the same job in a smaller run keeps it
    def identity(j):
        return j["dataset"], j["setting"], j["method"], json.dumps(j["options"]), j["restart"]

    by_identity = {identity(j): j["seed"] for j in jobs}
    smaller = LiBIBenchmarkSettings(datasets=("mobius",), methods=("LiBI", "MAPA"), settings=("mlp",),
                                    restarts=1, mlp_restarts=2)
    for j in make_jobs(smaller):
        assert j["seed"] == by_identity[identity(j)]
    # another draw of the data: other seeds
    other = {j["seed"] for j in make_jobs(LiBIBenchmarkSettings(restarts=2, mlp_restarts=2, draw=1))}
    assert not other & set(seeds)
    # stable across processes and Python's hash randomisation (a hash() of the key would change per process):
    # the value the recorded runs were made with
    assert make_jobs(LiBIBenchmarkSettings.quick(**TINY))[0]["seed"] == 172764725
    for j in jobs:
        assert json.loads(json.dumps(j)) == j  # replayable from raw_results.json as it is


# --- settings and networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field, bad",
                         [("datasets", "circle"), ("methods", "NoSuchVAE"), ("settings", "huge")])
def test_settings_refuse_unknown_names(field, bad):
    valid = {"datasets": "linear_jtex", "methods": "VAE", "settings": "paper"}[field]
    with pytest.raises(ValueError, match=rf"{field}: unknown \['{bad}'\]"):  # only the unknown one
        LiBIBenchmarkSettings(**{field: (valid, bad)})
    with pytest.raises(ValueError, match=bad):
        LiBIBenchmarkSettings.quick(**{field: (bad,)})


@pytest.mark.parametrize("dataset, D",
                         [("linear_jtex", 2), ("cubic_jtex", 2), ("gaussian_4d", 4), ("mobius", 2)])
def test_paper_networks_shapes(dataset, D):
    torch.manual_seed(0)
    nets = paper_networks(dataset)
    z, x = torch.randn(7, 2), torch.randn(7, D)
    assert nets("decoder", 2, D)(z).shape == (7, D)
    assert nets("encoder", D, 4)(x).shape == (7, 4)  # a Gaussian guide's loc and scale
    assert nets("encoder", D, 2)(x).shape == (7, 2)  # a codebook's or LiBI's code network
    dec, enc = nets("decoder", 2, D), nets("encoder", D, 4)
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    if dataset in ("linear_jtex", "gaussian_4d"):
        assert isinstance(dec, nn.Linear) and isinstance(enc, nn.Linear)
    elif dataset == "cubic_jtex":
        assert [(m.in_features, m.out_features) for m in linears] == [(D, 4), (4, 20), (20, 4)]
        assert any(isinstance(m, HalfSigmoidCubeRoot) for m in enc.modules())
    else:
        assert [(m.in_features, m.out_features) for m in linears] == [(D, 50), (50, 4)]
        dec_linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in dec_linears] == [(2, 50), (50, 50), (50, D)]
        assert sum(isinstance(m, nn.Tanh) for m in dec.modules()) == 2


def test_cubic_jtex_decoder_cubes_a_linear_map():
    torch.manual_seed(0)
    dec = paper_networks("cubic_jtex")("decoder", 2, 2)
    linear = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 1
    z = torch.randn(20, 2, dtype=torch.float64)
    dec = dec.double()
    torch.testing.assert_close(dec(z), (z @ linear[0].weight.T + linear[0].bias) ** 3, rtol=1e-12, atol=1e-12)


def test_half_sigmoid_cube_root():
    f, eps = HalfSigmoidCubeRoot(), HalfSigmoidCubeRoot.eps
    t = torch.tensor([[-2.0, 0.5, -8.0, 27.0]], dtype=torch.float64)
    want = torch.tensor([[1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-0.5)),
                          -((8 + eps) ** (1 / 3) - eps ** (1 / 3)), (27 + eps) ** (1 / 3) - eps ** (1 / 3)]],
                        dtype=torch.float64)
    torch.testing.assert_close(f(t), want, rtol=1e-14, atol=1e-14)
    # continuous at 0, on both sides, with the finite slope (1/3) eps^(-2/3) ~ 7.2
    h = 1e-9
    at = lambda b: f(torch.tensor([[0.0, b]], dtype=torch.float64))[0, 1]  # noqa: E731
    assert float(at(0.0)) == 0.0
    slope = (1 / 3) * eps ** (-2 / 3)
    assert float(at(h)) == pytest.approx(slope * h, rel=1e-6)
    assert float(at(-h)) == pytest.approx(-slope * h, rel=1e-6)
    for b in (0.0, 1e-12, -1e-12, 1e-3):
        x = torch.tensor([[0.0, b]], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(f(x)[0, 1], x)
        assert torch.isfinite(g).all() and float(g[0, 1].abs()) <= slope * (1 + 1e-9)


# --- selection -------------------------------------------------------------------------------------


def _rec(method, valid, options=None, restart=0, dataset="linear_jtex", setting="paper", failed=False):
    job = dict(dataset=dataset, setting=setting, method=method, options=options or {}, restart=restart)
    out = {"job": job, "valid_ll": valid}
    if failed:
        out["failed"] = "NonFiniteLossError: loss is nan"
    else:
        out["test_ll"] = valid - 0.1
    return out


def test_summarize_picks_the_best_validation_log_likelihood():
    records = [
        _rec("LiBI", -math.inf, {"rounds": 1}, failed=True),  # first: must not block the finite ones
        _rec("LiBI", -3.0, {"rounds": 1}, restart=1),
        _rec("LiBI", -2.5, {"rounds": 3}),
        _rec("LiBI", -2.7, {"rounds": 3}, restart=1),
        _rec("LiBI", -math.inf, {"rounds": 3}, restart=2, failed=True),
        _rec("VAE", -4.0),
        _rec("VAE", -3.9, setting="mlp"),
        _rec("VAE", -5.0, dataset="mobius"),
        _rec("MAPA", -math.inf, failed=True),
        _rec("MAPA", -math.inf, restart=1, failed=True),
    ]
    rows = {(r["dataset"], r["setting"], r["method"]): r for r in summarize(records)}
    assert len(rows) == 5
    libi = rows[("linear_jtex", "paper", "LiBI")]
    assert (libi["valid_ll"], libi["options"], libi["restart"]) == (-2.5, {"rounds": 3}, 0)
    assert libi["test_ll"] == -2.6 and "failed" not in libi and "job" not in libi
    assert (libi["candidates"], libi["failed_candidates"]) == (5, 2)
    vae = [rows[(dataset, setting, "VAE")]["valid_ll"]
           for dataset, setting in (("linear_jtex", "paper"), ("linear_jtex", "mlp"), ("mobius", "paper"))]
    assert vae == [-4.0, -3.9, -5.0]
    assert rows[("linear_jtex", "paper", "VAE")]["candidates"] == 1
    mapa = rows[("linear_jtex", "paper", "MAPA")]  # all failed: the row says so
    assert "failed" in mapa and (mapa["candidates"], mapa["failed_candidates"]) == (2, 2)
    # a failure after a finite record does not win either, whatever the order
    for order in (records, records[::-1]):
        row = [r for r in summarize(order) if r["method"] == "LiBI"][0]
        assert row["valid_ll"] == -2.5


def test_summarize_never_selects_a_nan_over_a_finite_record():
    records = [_rec("VAE", math.nan), _rec("VAE", -4.0, restart=1), _rec("VAE", math.inf, restart=2),
               _rec("VAE", -math.inf, restart=3, failed=True)]
    for order in (records, records[::-1]):
        (row,) = summarize(order)
        assert row["valid_ll"] == -4.0 and row["restart"] == 1


def test_run_job_turns_a_diverged_training_into_a_failed_record(monkeypatch):
    class Diverging:
        valid_data = None

        def train(self, **kwargs):
            raise NonFiniteLossError("loss is nan at step 3")

    monkeypatch.setattr(lb, "build_method", lambda *a, **k: Diverging())
    job = make_jobs(LiBIBenchmarkSettings.quick(**TINY))[0]
    rec = run_job(job)
    assert rec["valid_ll"] == -math.inf and "loss is nan" in rec["failed"] and rec["job"] == job
    assert summarize([rec])[0]["failed_candidates"] == 1


# --- one tiny run end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A recorded one-job run (VAE, 2 epochs, linear_jtex): its directory and raw records."""
    out = tmp_path_factory.mktemp("libi_tiny")
    run_libi_benchmarks(LiBIBenchmarkSettings.quick(**TINY), out, progress=False)
    raw = json.loads((out / "raw_results.json").read_text())
    assert raw["settings"]["experiment"] == "libi_benchmarks" and len(raw["results"]) == 1
    return out, raw["results"][0]


def test_run_job_metrics(recorded):
    _, rec = recorded
    job = make_jobs(LiBIBenchmarkSettings.quick(**TINY))[0]
    assert rec["job"] == job and "failed" not in rec
    assert VAE_METRICS <= set(rec)
    for key in VAE_METRICS | TIMINGS:
        assert isinstance(rec[key], (int, float)) and math.isfinite(rec[key]), key
    ds = load_dataset("linear_jtex", seed=0)
    assert rec["true_test_ll"] == pytest.approx(float(ds.true_log_prob(ds.test).double().mean()), abs=1e-12)
    assert rec["test_kl"] == pytest.approx(rec["true_test_ll"] - rec["test_ll"], abs=1e-9)
    assert rec["posterior_kl"] >= -1e-6
    assert rec["posterior_kl"] == pytest.approx(rec["test_ll"] - rec["test_elbo"], abs=1e-9)
    assert rec["aggregate_kl"] >= 0 and rec["paper_is_se"] > 0
    # importance sampling underestimates log p(x) on average
    assert rec["paper_is_ll"] <= rec["test_ll"] + 4 * rec["paper_is_se"]
    assert rec["steps"] == 2 * math.ceil(len(ds.train) / job["batch_size"])


def test_run_job_is_deterministic(recorded):
    _, rec = recorded
    again = run_job(rec["job"])
    assert set(again) == set(rec)
    for key in set(rec) - TIMINGS:
        assert again[key] == rec[key], key  # exactly: the JSON round trip of a float is exact


def test_run_job_without_an_inference_network_has_no_is_estimate(monkeypatch):
    """MAPA (no q(z|x)): the model metrics but no paper IS, ELBO or aggregate KL (small splits: fast)."""
    real = lb.load_dataset
    monkeypatch.setattr(lb, "load_dataset",
                        lambda name, seed: real(name, num_train=100, num_valid=8, num_test=8, seed=seed))
    job = make_jobs(LiBIBenchmarkSettings.quick(**{**TINY, "methods": ("MAPA",), "model_samples": 8}))[0]
    rec = run_job(job)
    assert "failed" not in rec
    for key in ("paper_is_ll", "paper_is_se", "test_elbo", "posterior_kl", "aggregate_kl"):
        assert key not in rec
    for key in ("valid_ll", "test_ll", "test_kl", "true_test_ll", "mmd2"):
        assert math.isfinite(rec[key]), key


def test_check_reproduction_replays_a_recorded_run(recorded, tmp_path):
    out, _ = recorded
    report = check_reproduction(out, sample=1)
    assert report["passed"], report["verdict"]
    assert (report["sample"], report["of"], report["largest_difference"]) == (1, 1, 0.0)
    assert "test_ll" in report["metrics"] and "paper_is_ll" in report["metrics"]
    # a recorded number edited by +1: the check finds it
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    raw = json.loads((edited / "raw_results.json").read_text())
    raw["results"][0]["test_ll"] += 1.0
    (edited / "raw_results.json").write_text(json.dumps(raw))
    report = check_reproduction(edited, sample=1)
    assert report["largest_difference"] == pytest.approx(1.0, abs=1e-9)
    assert report["metrics"]["test_ll"]["max_abs_difference"] == pytest.approx(1.0, abs=1e-9)
    assert not report["passed"]
    # same code and environment (the usual case here): determinism is broken; else the code moved under us
    assert ("determinism is broken" if report["same_code"] and not report["environment_differences"]
            else "differ") in report["verdict"]


def test_merge_replaces_one_methods_records_and_keeps_the_rest(tmp_path):
    small = dict(epochs=2, is_samples=20, flow_steps=5, model_samples=20)
    lb.run_libi_benchmarks(lb.LiBIBenchmarkSettings.quick(methods=("VAE", "beta-VAE"), **small), tmp_path,
                           progress=False)
    before = json.loads((tmp_path / "raw_results.json").read_text())["results"]
    vae_before = [r for r in before if r["job"]["method"] == "VAE"]
    lb.run_libi_benchmarks(lb.LiBIBenchmarkSettings.quick(methods=("beta-VAE",), lr=1e-2, **small), tmp_path,
                           progress=False, merge=True)
    raw = json.loads((tmp_path / "raw_results.json").read_text())
    assert [r for r in raw["results"] if r["job"]["method"] == "VAE"] == vae_before  # kept as recorded
    beta = [r for r in raw["results"] if r["job"]["method"] == "beta-VAE"]
    assert len(beta) == 1 and beta[0]["job"]["lr"] == 1e-2  # the rerun's record replaced the old one
    assert raw["merged"][0]["replaced"] == [["linear_jtex", "paper", "beta-VAE"]]
    summary = json.loads((tmp_path / "libi_benchmarks.json").read_text())
    assert {r["method"] for r in summary["rows"]} == {"VAE", "beta-VAE"}
    with pytest.raises(ValueError, match="merge=True needs an output directory"):
        lb.run_libi_benchmarks(lb.LiBIBenchmarkSettings.quick(**small), tmp_path / "empty", merge=True)


def test_a_stopped_run_resumes_from_its_partial_records(tmp_path, monkeypatch):
    small = dict(epochs=2, is_samples=20, flow_steps=5, model_samples=20)
    settings = lb.LiBIBenchmarkSettings.quick(methods=("VAE", "beta-VAE"), **small)
    jobs = lb.make_jobs(settings)
    first = lb.run_job(jobs[0])
    partial = tmp_path / "raw_results.partial.jsonl"
    partial.write_text(json.dumps(lb.jsonable(first)) + "\n")  # as if the run stopped after one job
    ran = []
    real = lb.run_job
    monkeypatch.setattr(lb, "run_job", lambda job: ran.append(job) or real(job))
    lb.run_libi_benchmarks(settings, tmp_path, progress=False)
    assert ran == jobs[1:]  # the finished job is reused, not rerun
    raw = json.loads((tmp_path / "raw_results.json").read_text())
    assert [r["job"] for r in raw["results"]] == jobs and raw["results"][0] == lb.jsonable(first)
    assert not partial.exists()  # folded into raw_results.json
