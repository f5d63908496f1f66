"""The tables of docs/results.md's section on users' own Pyro models, from the committed JSON.

Each table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
docs/results.md and is exactly what this script prints for it (``tests/test_user_models_tables.py``
checks it)::

    python scripts/user_models_tables.py            # print the tables
    python scripts/user_models_tables.py --write    # splice them into docs/results.md

Sources: ``docs/results/ppca.json`` (``python examples/ppca.py --out ...``),
``docs/results/pyro_tutorial_vae.json`` (``python examples/pyro_tutorial_vae.py --out ...``),
``docs/results/bnn_lv.json`` (``python examples/bnn_lv.py --draws 3 --out ...``) and
``docs/results/smoothed_mapa.json`` (``python experiments/smoothed_mapa.py --output ...``) and
``docs/results/smoothed_mapa_continuous.json`` (the same with ``--kinds continuous --benchmarks``), if present.
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


TABLES = {"ppca": ppca_table, "tutorial_vae": vae_table, "bnn_lv": bnn_table, "smoothed_mapa": smoothed_table}


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
