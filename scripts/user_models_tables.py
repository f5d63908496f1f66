"""The tables of docs/results.md's sections on users' own Pyro models and on LiBI's benchmarks, from the committed JSON.

Each table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
docs/results.md and is exactly what this script prints for it (``tests/test_user_models_tables.py``
checks it)::

    python scripts/user_models_tables.py            # print the tables
    python scripts/user_models_tables.py --write    # splice them into docs/results.md

Sources: ``docs/results/ppca.json`` (``python examples/ppca.py --out ...``),
``docs/results/pyro_tutorial_vae.json`` (``python examples/pyro_tutorial_vae.py --out ...``),
``docs/results/bnn_lv.json`` (``python examples/bnn_lv.py --draws 3 --out ...``) and
``docs/results/smoothed_mapa.json`` (``python experiments/smoothed_mapa.py --output ...``) and
``docs/results/smoothed_mapa_continuous.json`` (the same with ``--kinds continuous --benchmarks``), if present,
and ``docs/results/libi_benchmarks/libi_benchmarks.json`` (``pyro-mapa libi-benchmarks --output docs/results/libi_benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "docs" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def ppca_table() -> str:
    d = _load("ppca.json")
    ll, s = d["test_loglik"], d["sigma"]
    lines = ["| model | held-out log p(x) per point | noise scale σ |", "|---|---|---|"]
    lines.append(f"| true generating PPCA | {ll['true model']:.4f} | {s['truth']:.4f} |")
    lines.append(f"| maximum-likelihood PPCA (closed form) | {ll['MLE PPCA']:.4f} | {s['MLE']:.4f} |")
    lines.append(f"| MAPA + KDE prior, exact (grid) | {ll['MAPA (KDE prior), grid']:.4f} | {s['MAPA']:.4f} |")
    lines.append(f"| MAPA + KDE prior, closed-form mixture | {ll['MAPA (KDE prior), closed form']:.4f} | |")
    return "\n".join(lines)


def vae_table() -> str:
    d = _load("pyro_tutorial_vae.json")["results"]
    lines = [
        "| method | exact (grid) | importance sampling ± MC se | Pareto k̂ median / max |",
        "|---|---|---|---|",
    ]
    for name, label in (("VAE", "tutorial guide, Trace_ELBO"), ("MAPA", "MAPA (empiricalize), KDE prior")):
        r = d[name]
        lines.append(
            f"| {label} | {r['exact']:.3f} | {r['importance']:.3f} ± {r['importance_se']:.3f} | "
            f"{r['median_pareto_k']:.2f} / {r['max_pareto_k']:.2f} |"
        )
    return "\n".join(lines)


def bnn_table() -> str:
    d = _load("bnn_lv.json")
    cells = {(r["toy"], r["method"], r["prior"]): f"{r['kl_mean']:.3f} ± {r['kl_sd']:.3f}" for r in d["summary"]}
    lines = [
        "| toy | mean-field | MAPA, z ~ N(0, γ²) at test | MAPA, z ~ its learned codes | best model without z |",
        "|---|---|---|---|---|",
    ]
    for toy in ("heteroscedastic", "bimodal"):
        lines.append(
            f"| {toy} | {cells[(toy, 'mean-field', 'normal_prior')]} | {cells[(toy, 'MAPA', 'normal_prior')]} | "
            f"{cells[(toy, 'MAPA', 'codes_prior')]} | {d['no_z_reference_kl'][toy]:.3f} |"
        )
    return "\n".join(lines)


def smoothed_table() -> str:
    d = _load("smoothed_mapa.json")
    if d is None:
        return "(not yet measured: run experiments/smoothed_mapa.py with --output)"
    lines = [
        "| data | d | method | τ | valid LL | test LL (exact) | test LL (IS) ± MC se | share k̂ > 0.7 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    extra = _load("smoothed_mapa_continuous.json")  # continuous digits, if measured
    for r in d["digits"] + (extra["digits"] if extra else []):
        t = r["test_importance"]
        exact = f"{r['test_ll_exact']:.2f}" if "test_ll_exact" in r else ""
        lines.append(
            f"| {r['data']} | {r['latent_dim']} | {r['method']} | {r['tau']:g} | {r['valid_ll']:.2f} | {exact} | "
            f"{t['ll']:.2f} ± {t['mc_se']:.2f} | {t['share_k_above_0.7']:.2f} |"
        )
    bench = ["", "| data | draw | method | τ | valid LL | test KL(truth ‖ model) |", "|---|---|---|---|---|---|"]
    for r in d["benchmarks"]:
        bench.append(
            f"| {r['data']} | {r['draw']} | {r['method']} | {r['tau']:g} | {r['valid_ll']:.3f} | {r['test_kl']:.3f} |"
        )
    return "\n".join(lines + (bench if d["benchmarks"] else []))


LIBI_SETS = ("linear_jtex", "cubic_jtex", "gaussian_4d", "mobius")


def _libi_rows() -> list[dict] | None:
    d = _load("libi_benchmarks/libi_benchmarks.json")
    return None if d is None else d["rows"]


def libi_kl_table() -> str:
    """Test KL(truth ‖ model) per method (rows) and data set × network setting (columns)."""
    rows = _libi_rows()
    if rows is None:
        return "(not yet measured: run pyro-mapa libi-benchmarks --output docs/results/libi_benchmarks)"
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = [(ds, st) for st in ("paper", "mlp") for ds in LIBI_SETS
            if any(r["dataset"] == ds and r["setting"] == st for r in rows)]
    cell = {(r["dataset"], r["setting"], r["method"]): r for r in rows}
    lines = ["| method | " + " | ".join(f"{ds} ({st})" for ds, st in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        vals = []
        for ds, st in cols:
            r = cell.get((ds, st, m))
            vals.append("" if r is None else ("failed" if "failed" in r else f"{r['test_kl']:.3f}"))
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def libi_detail_table() -> str:
    """Every metric of the selected run, the paper's networks."""
    rows = _libi_rows()
    if rows is None:
        return "(not yet measured)"
    lines = ["| data set | method | chosen | test LL (exact) | paper's IS | MMD² | KL(q_agg ‖ p) | "
             "E KL(q ‖ p(z|x)) | passes/pt | s/epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["setting"] != "paper" or "failed" in r:
            continue
        opts = ", ".join(f"{k}={v:g}" for k, v in r["options"].items() if k not in ("cov_scale", "mean_scale"))
        paper = f"{r['paper_is_ll']:.3f}" if "paper_is_ll" in r else "–"
        agg = f"{r['aggregate_kl']:.3f}" if "aggregate_kl" in r else "–"
        post = f"{r['posterior_kl']:.3f}" if "posterior_kl" in r else "–"
        lines.append(f"| {r['dataset']} | {r['method']} | {opts or '–'} | {r['test_ll']:.3f} | {paper} | "
                     f"{r['mmd2']:.4f} | {agg} | {post} | {r['passes_per_point']:.2f} | {r['seconds_per_epoch']:.3f} |")
    truth = {r["dataset"]: r["true_test_ll"] for r in rows if "true_test_ll" in r}
    lines.append("")
    lines.append("True test log-likelihood per point: " + ", ".join(f"{k} {v:.3f}" for k, v in truth.items()) + ".")
    floor = _load("libi_benchmarks/libi_benchmarks.json").get("reference_mmd2", {})
    if floor:
        lines.append("MMD² of a fresh sample of the true process against the test set (the statistic's floor): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in floor.items()) + ".")
    return "\n".join(lines)


TABLES = {"ppca": ppca_table, "tutorial_vae": vae_table, "bnn_lv": bnn_table, "smoothed_mapa": smoothed_table,
          "libi_kl": libi_kl_table, "libi_detail": libi_detail_table}


def splice(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/results.md has no markers for the table {name!r}")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(3), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="splice the tables into docs/results.md")
    args = p.parse_args(argv)
    if args.write:
        DOC.write_text(splice(DOC.read_text()))
    else:
        for name, make in TABLES.items():
            print(f"## {name}\n{make()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
