"""The results tables of docs/results.md, generated from the committed JSON files (no number typed by hand).

Tables (name: source):
  main                 test KL ± SE per data set and method    docs/results/paper_reproduction.json
  passes               network passes and seconds per epoch     docs/results/paper_reproduction.json
  true_ll              true test log-likelihood per data set    docs/results/paper_reproduction.json
  sweep                test KL vs passes (Fig. 2b's numbers)    docs/results/paper_reproduction.json
  non_identifiability  §6.4: MAPA vs two decoders' posteriors   docs/results/paper_reproduction.json
  digits               scikit-learn digits, IS and quadrature   docs/results/digits.json
  highdim              64-D synthetic ground truth, N = 10^5    docs/results/synthetic_highdim.json
  seed_main            test KL of the seed methods, and VAE,     docs/results/seed_methods/paper_reproduction.json
                       IWAE, MAPA of the paper run's draw 0      + docs/results/raw_results.json
  seed_passes          their passes and seconds per epoch        docs/results/seed_methods/paper_reproduction.json
  seed_options         InfoVAE / HVAE settings chosen            docs/results/seed_methods/raw_results.json
  free_codes           MAPA vs MAPA with free codes, test KL     docs/results/free_codes/paper_reproduction.json
  free_passes          their passes and seconds per epoch        docs/results/free_codes/paper_reproduction.json
  collapse             collapse diagnostics, every method        docs/results/collapse/raw_results.json
  mutation             mutation score per module                 docs/results/mutation/*.json (+ rechecks/)
  mutation_equivalents the survivors counted as equivalent, why  docs/results/mutation_equivalents.json
  provenance           which commit, libraries, machine made each file (results and benchmarks)
  checks               what `pyro-mapa reproduce --check` found per folder  docs/results/**/check*.json
  regeneration         wall-clock time of each step of scripts/regenerate_all.sh  docs/results/regeneration_times.json
  step_time            per-step time of the objectives, small nets  benchmarks/results/step_time.json
  profile_small        where a small-network MAPA step goes         benchmarks/results/profile_small.json
  big_equal, big_decoder  big networks: MAPA vs IWAE per step       benchmarks/results/big_networks.json
  big_unmasked         the same without the negligible-weight mask  benchmarks/results/big_networks_unmasked.json
  table_build          exact table build vs scikit-learn kNN        benchmarks/results/table_build.json
  approx_neighbors     HNSW tables vs the exact one                 benchmarks/results/approx_neighbors.json

Every method in the JSON gets its column or row, in the order the run wrote them, so a
regenerated file with more methods (InfoVAE, HVAE, LIDVAE, LiBI, RenyiELBO, MAPA-free, ...)
needs no change here.

In a Markdown file, a table sits between two markers and --splice replaces what is between them:

    <!-- table:main -->

    | data set | VAE | ... |

    <!-- /table:main -->

Run:  python scripts/make_results_tables.py                      (print every table)
      python scripts/make_results_tables.py --table main digits  (print some)
      python scripts/make_results_tables.py --splice docs/results.md
      python scripts/make_results_tables.py --check docs/results.md   (exit 1 if a table is stale)
      (the docs with marked tables: results.md, reliability.md, benchmarks.md, scaling.md)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["MARKER", "draw_entries", "make_tables", "seed_main_table", "splice"]

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)
BOLD_AMONG = ("VAE", "IWAE", "MAPA")


def _row(cells: Sequence[Any]) -> str:
    return "|" + "|".join(f" {c} " if str(c) != "" else " " for c in cells) + "|"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def _labels(per_dataset: dict[str, dict[str, Any]]) -> list[str]:
    """Method labels in first-seen order over the data sets."""
    seen: dict[str, None] = {}
    for entry in per_dataset.values():
        seen.update(dict.fromkeys(entry))
    return list(seen)


def main_table(rep: dict[str, Any], bold_among: Sequence[str] = BOLD_AMONG) -> str:
    """Test KL (mean ± SE over draws); bold: the lowest mean among ``bold_among``."""
    labels = _labels(rep["datasets"])
    rows = []
    for name, entry in rep["datasets"].items():
        contenders = [entry[m]["test_kl_mean"] for m in bold_among if m in entry]
        best = min(contenders) if contenders else None
        cells = []
        for m in labels:
            r = entry.get(m)
            cells.append("" if r is None else _bold(f"{r['test_kl_mean']:.3f} ± {r['test_kl_se']:.3f}",
                                                     m in bold_among and r["test_kl_mean"] == best))
        rows.append([name, *cells])
    return _table(["data set", *labels], rows)


DRAW0_LABELS = ("VAE", "IWAE", "MAPA")
# Settings that define what a test KL measures: equal in two runs, their draw-0 numbers stand side by side.
FOOTING_KEYS = ("num_train", "num_valid", "num_test", "hidden", "epochs", "batch_size", "lr", "restarts",
                "quadrature_points", "num_top", "num_samples", "iwae_particles", "method_options")


def _chosen_restart(restarts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The restart ``reproduce`` keeps: the first, replaced by any later one with a finite, higher validation LL."""
    best = restarts[0]
    for rec in restarts[1:]:
        if math.isfinite(rec["valid_ll"]) and not rec["valid_ll"] <= best["valid_ll"]:
            best = rec
    return best


def draw_entries(raw: dict[str, Any], labels: Sequence[str] = DRAW0_LABELS,
                 draw: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """One draw's test KL per data set and label from ``raw_results.json``, as a one-draw summary has it.

    The job's number is its restart chosen on validation log-likelihood (the rule of ``reproduce``, checked
    against the restarts it records); ± is the standard error over the test points, as in a one-draw run.

    Raises:
        ValueError: if a job's recorded best restart is not the one its validation log-likelihoods choose.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in raw["results"]:
        if r.get("kind", "main") != "main" or r["draw"] != draw or r["label"] not in labels:
            continue
        chosen = _chosen_restart(r["restarts"])
        if (chosen["restart"], chosen.get("options")) != (r["best_restart"], r.get("options")):
            raise ValueError(f"raw_results.json: {r['dataset']} draw {draw} {r['label']} records restart "
                             f"{r['best_restart']} as best, but validation LL chooses {chosen['restart']}; "
                             "regenerate the file with `pyro-mapa reproduce`")
        out.setdefault(r["dataset"], {})[r["label"]] = {
            "test_kl_mean": r["test_kl"], "test_kl_se": r["test_kl_se_points"], "true_test_ll_mean": r["true_test_ll"],
            "num_restarts": len(r["restarts"])}
    return out


def _commit(prov: dict[str, Any]) -> str:
    git = prov.get("git") or {}
    return (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")


def seed_main_table(rep: dict[str, Any], paper_raw: dict[str, Any] | None = None,
                    labels: Sequence[str] = DRAW0_LABELS) -> str:
    """The seed methods' test KL; with ``paper_raw``, first ``labels`` from its draw 0, and a note on the footing.

    The note compares the two runs from their JSON: the settings that define the number (``FOOTING_KEYS``),
    the split (draw 0 against the seed run's draws), the true test log-likelihood per data set (equal when
    the test points are), the commit, the libraries and the machine.
    """
    if paper_raw is None:
        return main_table(rep, ())
    extra = draw_entries(paper_raw, labels)
    merged = {"datasets": {name: {**{m: v for m, v in extra.get(name, {}).items() if m not in entry}, **entry}
                           for name, entry in rep["datasets"].items()}}
    shown = [m for m in labels if any(m in e for e in merged["datasets"].values())]
    if not shown:
        return main_table(rep, ())
    a, b = paper_raw.get("settings", {}), rep.get("settings", {})
    pa, pb = paper_raw.get("provenance") or {}, rep.get("provenance") or {}
    same = [f"{k} = {a.get(k) if a.get(k) != {} else 'none'}" for k in FOOTING_KEYS if a.get(k) == b.get(k)]
    differ = [f"{k} ({a.get(k)} vs {b.get(k)})" for k in FOOTING_KEYS if a.get(k) != b.get(k)]
    true_differs = [name for name, entry in merged["datasets"].items() if len({round(v["true_test_ll_mean"], 9)
                    for v in entry.values() if "true_test_ll_mean" in v}) > 1]
    if true_differs:
        differ.append(f"the true test log-likelihood on {', '.join(true_differs)} (other test points)")
    else:
        same.append("split seed 0, with an equal true test log-likelihood on every data set (the same test points)")
    ga, gb = pa.get("git") or {}, pb.get("git") or {}
    if ga.get("commit") and ga.get("commit") == gb.get("commit"):
        same.append(f"commit {ga['commit'][:10]}")
        if ga.get("dirty") != gb.get("dirty"):
            differ.append("the commit's tree is marked dirty in " + ("the paper run" if ga.get("dirty") else
                                                                     "the seed-method run") + " only")
    else:
        differ.append(f"commit ({_commit(pa)} vs {_commit(pb)})")
    for key, what in (("libraries", "library versions"), ("machine", "machine")):
        (same if pa.get(key) == pb.get(key) else differ).append(f"the {what}")
    if b.get("draws", 1) != 1:
        differ.append(f"the seed methods' ± is over {b.get('draws')} draws, not over test points")
    restarts = "/".join(map(str, sorted({v["num_restarts"] for e in extra.values() for v in e.values()})))
    when = " and ".join(q.get("date_utc", "?")[:16].replace("T", " ") for q in (pa, pb))
    differ += [f"the runs themselves ({when} UTC; {a.get('draws', '?')} and {b.get('draws', '?')} draws)",
               "the restart seeds, which hash the method name (as between any two methods)"]
    names = [f"{m} (K = {a.get('num_top')}, S = {a.get('num_samples')})" if m == "MAPA" else m for m in shown]
    names_text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    note = (f"The first {len(shown)} columns, {names_text}, are draw 0 of the paper reproduction "
            "(`raw_results.json`) on the footing of the other columns: the restart "
            f"(of {restarts}) with the best validation log-likelihood, its exact test KL, ± the standard error "
            f"over the {a.get('num_test', '?')} test points; not the means over {a.get('draws', '?')} draws of the "
            "table above. "
            f"Identical in the two runs: {'; '.join(same)}. Not identical: {'; '.join(differ)}.")
    return main_table(merged, ()) + "\n\n" + note


def passes_table(rep: dict[str, Any]) -> str:
    """Encoder and decoder passes per point per step and seconds per epoch, means over data sets."""
    rows = []
    for m in _labels(rep["datasets"]):
        rs = [e[m] for e in rep["datasets"].values() if m in e]
        means = {key: sum(r[key] for r in rs) / len(rs) for key in
                 ("encoder_passes_per_point", "decoder_passes_per_point", "passes_per_point_per_step")}
        seconds = sum(r["seconds_per_epoch"] for r in rs) / len(rs)
        rows.append([m, *(f"{v:.2f}" for v in means.values()), f"{seconds:.3f}"])
    return _table(["method", "encoder passes / point / step", "decoder passes / point / step", "total",
                   "seconds / epoch (mean over data sets)"], rows)


def true_ll_table(rep: dict[str, Any]) -> str:
    rows = [[name, f"{next(iter(entry.values()))['true_test_ll_mean']:.3f}"]
            for name, entry in rep["datasets"].items()]
    return _table(["data set", "true test LL (mean over draws)"], rows)


def sweep_table(rep: dict[str, Any]) -> str:
    """One restart on the first draw: test KL and passes of every sweep point."""
    rows = []
    for name, points in rep.get("sweep", {}).items():
        for p in sorted(points, key=lambda p: (p["method"], p["passes_per_point_per_step"])):
            rows.append([name, p["label"], f"{p['passes_per_point_per_step']:.2f}", f"{p['test_kl']:.3f}"])
    return _table(["data set", "method", "passes / point / step", "test KL"], rows)


def non_identifiability_table(rep: dict[str, Any]) -> str:
    k = rep.get("settings", {}).get("num_top", 5)
    rows = []
    for name, entry in rep.get("non_identifiability", {}).items():
        for key, v in entry.items():
            if isinstance(v, dict):
                rows.append([name, key.removeprefix("variant "), f"{v['mean_tv_to_mapa']:.2f}",
                             f"{v['mean_mass_in_mapa_top_k']:.2f}"])
    return _table(["data set", "variant", "total variation, MAPA vs the variant's index posterior",
                   f"variant's posterior mass in MAPA's top-{k}"], rows)


def digits_table(dig: dict[str, Any]) -> str:
    """Bold: per data and d, the best method by the number to trust (quadrature if there is one, else IS)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in dig["rows"]:
        groups.setdefault((r["data"], r["latent_dim"]), []).append(r)
    rows = []
    for group in groups.values():
        key = "test_ll_quadrature" if all("test_ll_quadrature" in r for r in group) else "test_ll_is"
        best = max(r[key] for r in group)
        for r in group:
            is_cell = f"{r['test_ll_is']:.2f} ± {r['test_ll_is_se']:.2f}"
            quad = f"{r['test_ll_quadrature']:.2f}" if "test_ll_quadrature" in r else ""
            win = r[key] == best
            quad = _bold(quad, win and key == "test_ll_quadrature") if quad else ""
            rows.append([r["data"], r["latent_dim"], r["method"], _bold(is_cell, win and key == "test_ll_is"),
                         f"{r['mc_stderr_mean']:.3f}", quad, f"{r['pareto_k_max']:.2f}",
                         f"{r['share_k_above_0.7']:.2f}", f"{r['ess_median']:.0f}",
                         f"{r['passes_per_point_per_step']:.1f}"])
    return _table(["data", "d", "method", "test LL (IS)", "MC SE", "test LL (quadrature)", "max k̂",
                   "share k̂ > 0.7", "median ESS", "passes / point / step"], rows)


def _short(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def highdim_table(hd: dict[str, Any]) -> str:
    st = hd["settings"]
    n = st["num_train"]
    n_text = f"10^{round(math.log10(n))}" if n > 0 and 10 ** round(math.log10(n)) == n else f"{n:,}"
    threads = st.get("threads", "?")
    rows = [
        ["true mean test log-likelihood", f"{hd['true_test_ll']:.3f}"],
        [f"table build (N = {n_text}, D = {hd.get('data_dim', 64)}, M = {st['max_support']}, {threads} thread"
         f"{'' if threads == 1 else 's'})", f"{hd['table_seconds']:.0f} s"],
        ["peak RSS after building the table (reported by the script)",
         f"{hd['peak_rss_mib_after_table'] / 1024:.1f} GiB"],
    ]
    best = min(m["test_kl"] for m in hd["methods"].values())
    for name, m in hd["methods"].items():
        kl = _bold(f"{m['test_kl']:.3f} ± {m['test_kl_se']:.3f}", m["test_kl"] == best)
        rows.append([f"{name} test KL", f"{kl} ({m['seconds_per_epoch']:.1f} s / epoch, "
                     f"{_short(m['passes_per_point_per_step'])} passes / point / step)"])
    return _table(["", "value"], rows)


def provenance_table(files: dict[str, dict[str, Any]]) -> str:
    """Which code, libraries and machine made each results file ("not recorded" for older files)."""
    rows = []
    for name, data in files.items():
        p = data.get("provenance") or (data.get("meta") if isinstance(data.get("meta"), dict) else None)
        if not p or "schema" not in p:
            rows.append([name, "not recorded", "", "", "", ""])
            continue
        git = p.get("git") or {}
        commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
        libs = p.get("libraries", {})
        lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if k in ("torch", "pyro-ppl", "numpy") and v)
        machine = p.get("machine", {})
        threads = p.get("threads", {})
        rows.append([name, commit, p.get("date_utc", "")[:10], lib_text,
                     f"{machine.get('cpu', '')}, {machine.get('cpu_count', '')} cores",
                     f"{threads.get('threads_per_job', '')} thread(s) per job, {p.get('jobs')} job(s)"])
    return _table(["file", "commit", "date", "libraries", "machine", "threads"], rows)


def _median_range(m: dict[str, Any]) -> str:
    """``median (lo-hi)`` to two decimals; the median alone when the range is a point."""
    lo, hi = m["range"]
    return f"{m['median']:.2f}" if lo == hi else f"{m['median']:.2f} ({lo:.2f}-{hi:.2f})"


def _ratio(r: dict[str, Any], key: str) -> str:
    """A median ratio with its range over repeats, from ``r[key]`` and ``r[key + "_range"]``."""
    return _median_range({"median": r[key], "range": r[key + "_range"]})


def step_time_table(st: dict[str, Any]) -> str:
    """Median ms per SVI step and within-repeat ratios to the plain-PyTorch floor and to RenyiELBO."""
    rows = [[r["objective"], f"{r['ms_per_step']:.2f}", f"{r['seconds_per_epoch']:.3f}",
             _ratio(r, "vs_plain_mapa"), _ratio(r, "vs_renyi")] for r in st["rows"]]
    return _table(["objective", "ms / step", "s / epoch (10 steps)", "vs plain-PyTorch MAPA (range)",
                   "vs RenyiELBO (range)"], rows)


def profile_table(pr: dict[str, Any]) -> str:
    """Per-step CPU microseconds of the parts of a small-network step, and their ratio to the floor."""
    rows = [[r["part"].strip(), r["validation"], f"{r['us']:.0f}", _ratio(r, "vs_floor")] for r in pr["rows"]]
    return _table(["part", "validation", "CPU µs / step", "vs the floor (range)"], rows)


def big_networks_table(bn: dict[str, Any], label: str) -> str:
    """Wall ms per step early and late, late/early and vs IWAE(10) (medians, ranges over repeats), rows/point."""
    regime = next(r for r in bn["regimes"] if r["label"] == label)
    rows = []
    for r in regime["rows"]:
        rp = r.get("passes_per_point_late")
        rows.append([r["objective"], f"{r['wall_ms_early']:.1f}", f"{r['wall_ms_late']:.1f}",
                     _median_range(r["wall_late_over_early"]), _median_range(r["wall_vs_iwae10_early"]),
                     _median_range(r["wall_vs_iwae10_late"]), "" if rp is None else f"{rp[0]:.2f} + {rp[1]:.2f}"])
    return _table(["objective", "ms / step, steps 1-10", "ms / step, late steps", "late / early (range)",
                   "vs IWAE(10), early (range)", "vs IWAE(10), late (range)",
                   "encoder + decoder rows / point (late)"], rows)


def table_build_table(tb: dict[str, Any]) -> str:
    rows = [[f"{r['n']:,}", f"{r['ours_s']:.2f}", f"{r['sklearn_s']:.2f}", f"{r['ours_s'] / r['sklearn_s']:.2f}",
             f"{100 * r['rows_identical']:.3f} %".replace(".000 %", " %"), f"{r['peak_rss_mib_ours']:.0f}"]
            for r in tb["rows"]]
    return _table(["N", "ours: top-M + exact normalizer (s)", "scikit-learn brute kNN, neighbours only (s)",
                   "ratio", "rows with identical top-M sets", "peak RSS (MiB)"], rows)


def approx_neighbors_table(an: dict[str, Any]) -> str:
    m = re.search(r"M=(\d+)", an.get("meta", {}).get("setting", ""))
    rows = [[f"{r['n']:,}", f"{r['exact_s']:.1f}", f"{r['hnsw_exact_normalizer_s']:.1f}",
             f"{r['hnsw_sampled_normalizer_s']:.1f}", f"{r['recall_at_m']:.3f}",
             f"{r['sampled_log_normalizer_mean_abs_error']:.4f} / {r['sampled_log_normalizer_mean_reported_se']:.4f}"]
            for r in an["rows"]]
    return _table(["N", "exact table (s)", "HNSW + exact normalizer (s)", "HNSW + sampled normalizer (s)",
                   f"recall@{m.group(1) if m else 'M'}", "sampled log Z: mean abs error / mean reported SE"], rows)


def regeneration_table(times: dict[str, Any]) -> str:
    """Each step of scripts/regenerate_all.sh: its command, the commit it ran, its wall-clock time; and the total."""
    rows = [[step, f"`{t['command']}`", t["commit"][:10], f"{t['seconds']:,}", f"{t['seconds'] / 60:.1f}",
             t["finished_utc"][:16].replace("T", " ")]
            for step, t in sorted(times.items(), key=lambda item: item[1]["finished_utc"])]
    total = sum(t["seconds"] for t in times.values())
    rows.append(["**total**", "", "", f"**{total:,}**", f"**{total / 60:.1f}**", ""])
    return _table(["step", "command", "commit", "seconds", "minutes", "finished (UTC)"], rows)


def checks_table(reports: dict[str, dict[str, Any]]) -> str:
    """``pyro-mapa reproduce --check`` reports: which jobs were replayed, by which code, the largest difference."""
    rows = []
    for folder, c in reports.items():
        rows.append([folder, f"{c['sample']} of {c['of']} (sample seed {c['seed']})", "; ".join(j["job"] for j in c["jobs"]),
                     c["recorded"]["commit"][:10] + (" (dirty)" if c["recorded"]["dirty"] else ""),
                     c["current"]["commit"][:10] + (" (dirty)" if c["current"]["dirty"] else ""),
                     f"{c['largest_difference']:.3g}", ("PASS: " if c["passed"] else "FAIL: ") + c["verdict"]])
    return _table(["report", "jobs replayed", "which", "recorded commit", "replayed by", "largest difference",
                   "verdict"], rows)


def options_table(raw: dict[str, Any]) -> str:
    """The setting each (data set, method) chose on validation log-likelihood, with the restart."""
    rows = []
    for r in raw.get("results", raw if isinstance(raw, list) else []):
        opts = {k: v for k, v in (r.get("options") or {}).items() if k in ("alpha", "lambda_", "num_leapfrog",
                                                                          "tempering")}
        if opts and r.get("kind", "main") == "main":
            tried = sorted({json.dumps({k: v for k, v in (x.get("options") or {}).items() if k in opts},
                                       sort_keys=True) for x in r.get("restarts", [])})
            rows.append([r["dataset"], r["method"], ", ".join(f"{k}={v}" for k, v in opts.items()), len(tried)])
    return _table(["data set", "method", "chosen on validation LL", "settings tried"], rows)


COLLAPSE_METRICS = (("active_units", "active units", "{:.0f}"),
                    ("mutual_information", "I_q(x; z)", "{:.3f}"),
                    ("aggregate_kl", "KL(q_agg ‖ p)", "{:.3f}"),
                    ("model_collapse_kl", "E_x KL(p_θ(z\\| x) ‖ p(z))", "{:.3f}"),
                    ("guide_posterior_kl", "E_x KL(q(z\\| x) ‖ p_θ(z\\| x))", "{:.3f}"))


def collapse_table(raw: dict[str, Any]) -> str:
    """Collapse diagnostics of each job's chosen restart, exact on the 1-D grid (blank: not defined).

    The last column is the guide's inference gap against its own model's exact posterior (mean-field
    guides only): the number LiBI's second stage minimises.
    """
    rows = []
    for r in raw.get("results", []):
        c = r.get("collapse")
        if c is None or r.get("kind", "main") != "main":
            continue
        cells = ["" if key not in c else fmt.format(c[key]) for key, _, fmt in COLLAPSE_METRICS]
        rows.append([r["dataset"], r["label"], f"{r['test_kl']:.3f}", *cells])
    return _table(["data set", "method", "test KL", *(name for _, name, _ in COLLAPSE_METRICS)], rows)


def mutation_table(runs: dict[str, Any], rechecks: dict[str, set[int]] | None = None,
                   equivalents: dict[str, dict[str, str]] | None = None) -> str:
    """Killed / total per module (timeouts count as killed), then the survivors: killed by a test added after
    the run (``rechecks``, rerun with ``--only``), shown equivalent (``equivalents``, with reasons in the
    docs), or unexplained. The last column is the score over the non-equivalent mutants."""
    rechecks, equivalents = rechecks or {}, equivalents or {}
    rows = []
    for path, r in sorted(runs.items()):
        survivors = {m["id"] for m in r["mutants"] if m["status"] == "survived"}
        later = survivors & rechecks.get(path, set())
        equivalent = {int(i) for i in equivalents.get(path, {})} & (survivors - later)
        unexplained = sorted(survivors - later - equivalent)
        killed = r["killed"] + len(later)
        rows.append([f"`{path.removeprefix('pyro_mapa/')}`", f"{r['killed']} / {r['total']}",
                     f"{100 * r['killed'] / r['total']:.1f} %", len(later), len(equivalent),
                     ", ".join(f"#{i}" for i in unexplained) or "none",
                     f"{killed} / {r['total'] - len(equivalent)} ({100 * killed / (r['total'] - len(equivalent)):.1f} %)"])
    return _table(["module", "killed / total (run)", "score", "killed by later tests", "equivalent",
                   "unexplained survivors", "killed / non-equivalent"], rows)


def mutation_equivalents_table(runs: dict[str, Any], equivalents: dict[str, dict[str, str]]) -> str:
    """Each surviving mutant counted as equivalent, with the mutation and the reason."""
    rows = []
    for path, r in sorted(runs.items()):
        by_id = {m["id"]: m for m in r["mutants"]}
        for i, reason in sorted(equivalents.get(path, {}).items(), key=lambda kv: int(kv[0])):
            m = by_id.get(int(i))
            if m is not None and m["status"] == "survived":
                rows.append([f"`{path.removeprefix('pyro_mapa/')}`", f"#{i}", m["mutant"], reason])
    return _table(["module", "mutant", "change", "why it is equivalent"], rows)


def make_tables(results_dir: str | Path = ROOT / "docs" / "results",
                bold_among: Sequence[str] = BOLD_AMONG,
                benchmarks_dir: str | Path = ROOT / "benchmarks" / "results") -> dict[str, str]:
    """Every table whose JSON file exists in ``results_dir`` or ``benchmarks_dir``, by name."""
    results_dir, benchmarks_dir = Path(results_dir), Path(benchmarks_dir)
    load = lambda name: json.loads((results_dir / name).read_text())  # noqa: E731
    builders: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
        "main": ("paper_reproduction.json", lambda d: main_table(d, bold_among)),
        "passes": ("paper_reproduction.json", passes_table),
        "true_ll": ("paper_reproduction.json", true_ll_table),
        "sweep": ("paper_reproduction.json", sweep_table),
        "non_identifiability": ("paper_reproduction.json", non_identifiability_table),
        "digits": ("digits.json", digits_table),
        "highdim": ("synthetic_highdim.json", highdim_table),
        "seed_main": ("seed_methods/paper_reproduction.json",
                      lambda d: seed_main_table(d, load("raw_results.json") if (results_dir / "raw_results.json")
                                                .exists() else None)),
        "seed_passes": ("seed_methods/paper_reproduction.json", passes_table),
        "seed_options": ("seed_methods/raw_results.json", options_table),
        "free_codes": ("free_codes/paper_reproduction.json", lambda d: main_table(d, ("MAPA", "MAPA-free"))),
        "free_passes": ("free_codes/paper_reproduction.json", passes_table),
        "collapse": ("collapse/raw_results.json", collapse_table),
    }
    bench_builders: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
        "step_time": ("step_time.json", step_time_table),
        "profile_small": ("profile_small.json", profile_table),
        "big_equal": ("big_networks.json", lambda d: big_networks_table(d, "equal")),
        "big_decoder": ("big_networks.json", lambda d: big_networks_table(d, "big decoder")),
        "big_unmasked": ("big_networks_unmasked.json", lambda d: big_networks_table(d, "equal")),
        "table_build": ("table_build.json", table_build_table),
        "approx_neighbors": ("approx_neighbors.json", approx_neighbors_table),
    }
    out, files = {}, {}
    for name, (file, build) in builders.items():
        if (results_dir / file).exists():
            files.setdefault(file, load(file))
            out[name] = build(files[file])
    bench_files: dict[str, dict[str, Any]] = {}
    for name, (file, build) in bench_builders.items():
        if (benchmarks_dir / file).exists():
            bench_files.setdefault(file, json.loads((benchmarks_dir / file).read_text()))
            out[name] = build(bench_files[file])
    checks = {str(p.relative_to(results_dir.parent.parent)): json.loads(p.read_text())
              for p in sorted(results_dir.rglob("check*.json"))}
    if checks:
        out["checks"] = checks_table(checks)
    if (results_dir / "regeneration_times.json").exists():
        out["regeneration"] = regeneration_table(load("regeneration_times.json"))
    mutation, rechecks = {}, {}
    for path in sorted((results_dir / "mutation").glob("*.json")):
        mutation.update(json.loads(path.read_text()))
    for path in sorted((results_dir / "mutation" / "rechecks").glob("*.json")):
        for module, r in json.loads(path.read_text()).items():
            rechecks.setdefault(module, set()).update(m["id"] for m in r["mutants"] if m["status"] != "survived")
    if mutation:
        eq_file = results_dir / "mutation_equivalents.json"
        equivalents = json.loads(eq_file.read_text()) if eq_file.exists() else {}
        out["mutation"] = mutation_table(mutation, rechecks, equivalents)
        out["mutation_equivalents"] = mutation_equivalents_table(mutation, equivalents)
    if files or bench_files:
        out["provenance"] = provenance_table({**files, **{f"benchmarks/results/{k}": v for k, v in bench_files.items()}})
    return out


def splice(text: str, tables: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with every marked table replaced by the generated one; also returns the names replaced.

    Raises:
        ValueError: if a marker names a table that was not generated.
    """
    unknown = [m.group(2) for m in MARKER.finditer(text) if m.group(2) not in tables]
    if unknown:
        raise ValueError(f"markers name unknown tables {unknown}; known: {', '.join(tables)}")
    names = [m.group(2) for m in MARKER.finditer(text)]
    new = MARKER.sub(lambda m: f"{m.group(1)}\n{tables[m.group(2)]}\n\n{m.group(4)}", text)
    return new, names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results",
                        help="folder of the JSON files")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the benchmarks' JSON files")
    parser.add_argument("--table", nargs="+", default=None, help="print only these tables")
    parser.add_argument("--bold-among", nargs="+", default=list(BOLD_AMONG),
                        help="methods the main table's bold (lowest KL) is chosen among")
    parser.add_argument("--splice", type=Path, default=None,
                        help="rewrite the marked tables of this Markdown file")
    parser.add_argument("--check", type=Path, default=None,
                        help="exit 1 if this file's marked tables are stale")
    args = parser.parse_args(argv)
    tables = make_tables(args.results, args.bold_among, args.benchmarks)
    for path in (args.splice, args.check):
        if path is None:
            continue
        text = path.read_text()
        try:
            new, names = splice(text, tables)
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        if path is args.check:
            stale = [n for n in names if _section(text, n) != _section(new, n)]
            print(f"{path}: {len(names)} marked tables, stale: {', '.join(stale) or 'none'}")
            if stale:
                return 1
        else:
            path.write_text(new)
            print(f"{path}: regenerated {', '.join(names) or 'no tables (no markers)'}")
    if args.splice is None and args.check is None:
        for name in args.table or tables:
            if name not in tables:
                raise SystemExit(f"unknown table {name!r}; choose from {', '.join(tables)}")
            print(f"<!-- table:{name} -->\n\n{tables[name]}\n\n<!-- /table:{name} -->\n")
    return 0


def _section(text: str, name: str) -> str:
    m = next((m for m in MARKER.finditer(text) if m.group(2) == name), None)
    return m.group(3) if m else ""


if __name__ == "__main__":
    sys.exit(main())
