"""The seed-method table's VAE / IWAE / MAPA columns (draw 0 of the paper run) and the densities figure's layout."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pyro_mapa_experiments import figures
from pyro_mapa.datasets import load_dataset
from pyro_mapa_experiments.reproduce import ReproductionSettings, _grid

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def _tables_module():
    spec = importlib.util.spec_from_file_location("make_results_tables", ROOT / "scripts" / "make_results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name):
    return json.loads((RESULTS / name).read_text())


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_seed_table_puts_draw0_vae_iwae_mapa_first():
    """Each VAE / IWAE / MAPA cell is draw 0's job of raw_results.json: its restart with the highest validation
    LL (chosen here independently), its test KL ± the per-test-point SE; the seed methods' cells are unchanged."""
    tables = _tables_module()
    raw, seed = _load("raw_results.json"), _load("seed_methods/paper_reproduction.json")
    summary = _load("paper_reproduction.json")
    lines = tables.make_tables()["seed_main"].splitlines()
    seed_labels = list(next(iter(seed["datasets"].values())))
    assert _cells(lines[0]) == ["data set", "VAE", "IWAE", "MAPA", *seed_labels]
    rows = {_cells(line)[0]: _cells(line)[1:] for line in lines[2:2 + len(seed["datasets"])]}
    assert list(rows) == list(seed["datasets"])
    for name, cells in rows.items():
        for col, label in enumerate(("VAE", "IWAE", "MAPA")):
            (job,) = [r for r in raw["results"]
                      if (r["dataset"], r["draw"], r["label"], r["kind"]) == (name, 0, label, "main")]
            valid = [x["valid_ll"] for x in job["restarts"]]
            assert job["best_restart"] == job["restarts"][valid.index(max(valid))]["restart"]
            # The same number as the three-draw summary's first draw, and the same test points as the seed run.
            assert job["test_kl"] == summary["datasets"][name][label]["test_kl_per_draw"][0]
            assert job["true_test_ll"] == seed["datasets"][name][seed_labels[0]]["true_test_ll_mean"]
            assert cells[col] == f"{job['test_kl']:.3f} ± {job['test_kl_se_points']:.3f}"
        for col, label in enumerate(seed_labels, start=3):
            r = seed["datasets"][name][label]
            assert r["num_draws"] == 1 and cells[col] == f"{r['test_kl_mean']:.3f} ± {r['test_kl_se']:.3f}"
    note = "\n".join(lines[2 + len(seed["datasets"]):])
    assert "draw 0 of the paper reproduction" in note and "standard error over the 2000 test points" in note
    assert "num_train = 1000; num_valid = 1000; num_test = 2000; hidden = [50, 50]; epochs = 200" in note
    assert "equal true test log-likelihood on every data set" in note
    assert f"commit {raw['provenance']['git']['commit'][:10]}" in note.split("Not identical")[0]


def test_seed_table_note_names_what_differs():
    """Another epoch count, another test set or another commit in the seed run is said, not hidden."""
    tables = _tables_module()
    raw, seed = _load("raw_results.json"), _load("seed_methods/paper_reproduction.json")
    seed2 = copy.deepcopy(seed)
    seed2["settings"]["epochs"] = 100
    seed2["datasets"]["circle"]["LiBI"]["true_test_ll_mean"] += 1e-6  # another test set, however close
    seed2["provenance"]["git"]["commit"] = "f" * 40
    identical, differ = tables.seed_main_table(seed2, raw).split("Not identical: ")
    assert "epochs (200 vs 100)" in differ and "epochs = " not in identical
    assert "the true test log-likelihood on circle (other test points)" in differ
    assert "equal true test log-likelihood" not in identical
    assert f"commit ({raw['provenance']['git']['commit'][:10]} vs ffffffffff" in differ
    # Without the paper run's file the table is the seed methods' alone.
    assert tables.seed_main_table(seed).splitlines()[0] == "| data set | " + " | ".join(seed["datasets"]["circle"]) + " |"


def test_draw_entries_refuse_a_best_restart_validation_ll_does_not_choose():
    tables = _tables_module()
    raw = _load("raw_results.json")
    job = next(r for r in raw["results"] if (r["dataset"], r["draw"], r["label"]) == ("circle", 0, "MAPA"))
    entries = tables.draw_entries(raw)
    assert entries["circle"]["MAPA"]["test_kl_mean"] == job["test_kl"]
    assert set(entries) == set(raw["settings"]["datasets"]) and all(set(e) == {"VAE", "IWAE", "MAPA"}
                                                                    for e in entries.values())
    other = next(x for x in job["restarts"] if x["restart"] != job["best_restart"])
    other["valid_ll"] = max(x["valid_ll"] for x in job["restarts"]) + 1.0
    with pytest.raises(ValueError, match=r"circle draw 0 MAPA records restart .* validation LL chooses"):
        tables.draw_entries(raw)


def _density_results(names, methods, size, store_truth):
    """Grid results as ``reproduce`` writes them; each method's log density is the truth plus its index."""
    st = ReproductionSettings(datasets=names, methods=methods, grid_size=size, quadrature_points=401, is_quick=False)
    results, truths = [], {}
    for name in names:
        ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=0)
        grid, extent = _grid(torch.cat([ds.train, ds.test]), size)
        truths[name] = ds.true_log_prob(grid.double(), st.quadrature_points)
        for k, m in enumerate(methods):
            r = {"dataset": name, "method": m, "label": m, "grid_extent": extent, "test_kl": 0.5 + k,
                 "grid_log_density": (truths[name] + k).float().tolist()}
            if store_truth and m == "VAE":
                r["grid_true_log_density"] = [7.0] * size ** 2  # a marker: the stored truth is used as it is
            results.append(r)
    return st, results, truths


def test_densities_columns_truth_then_mapa_and_truth_without_a_vae():
    st, results, _ = _density_results(("circle",), ("VAE", "IWAE", "MAPA", "MAPA-GT"), 6, store_truth=True)
    (row,) = figures.density_panels(results, st)
    assert [p[0] for p in row["panels"]] == ["truth", "MAPA", "VAE", "IWAE", "MAPA-GT"]
    assert row["panels"][0][1] == [7.0] * 36 and row["panels"][1][1:] == (results[2]["grid_log_density"], 2.5)
    # A run without a VAE (the seed methods): the truth is computed on the same grid, in the same order.
    seed_methods = ("RenyiELBO", "InfoVAE", "LiBI")
    st, results, truths = _density_results(("figure8", "circle"), seed_methods, 12, store_truth=False)
    rows = figures.density_panels(results, st)
    assert [r["dataset"] for r in rows] == ["figure8", "circle"]
    for r in rows:
        assert [p[0] for p in r["panels"]] == ["truth", *seed_methods]
        truth = torch.tensor(r["panels"][0][1], dtype=torch.float64)
        assert torch.allclose(truth, truths[r["dataset"]], rtol=0, atol=1e-5)  # float32 storage
        assert (truth - truths[r["dataset"]]).abs().max() < 1e-3 * truths[r["dataset"]].std()


def test_densities_rows_are_titled_with_their_data_set():
    st, results, _ = _density_results(("figure8", "circle"), ("RenyiELBO", "MAPA"), 8, store_truth=False)
    fig = figures.densities_figure(results, st)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 6 and [ax.get_title() for ax in axes[:3]] == ["truth", "MAPA\nKL 1.500",
                                                                          "RenyiELBO\nKL 0.500"]
        for i, name in enumerate(("figure8", "circle")):
            first = axes[3 * i]
            assert not first.get_xticks().size and not first.get_yticks().size
            (title,) = [t for t in first.texts if t.get_text() == name]
            assert title.get_visible() and title.get_rotation() == 90 and title.get_fontsize() > 10
            # Left of the panel, in the figure: its right edge at the axes' left, not clipped away.
            fig.canvas.draw()
            box, panel = title.get_window_extent(), first.get_window_extent()
            assert box.x1 < panel.x0 and box.x0 > 0 and panel.y0 < (box.y0 + box.y1) / 2 < panel.y1
    finally:
        figures.plt.close(fig)
