"""MAPA, VAE and IWAE on scikit-learn's digits (1,797 × 64, shipped with scikit-learn, no download).

Two observation models: binarized pixels (> 7 of 16) with a Bernoulli likelihood and the
Bernoulli kernel (ρ = 0.9), and continuous pixels scaled to [0, 1] with a Gaussian
likelihood (σ = 0.1) and the Gaussian kernel (h = σ); latent dimension 2 and 8. MAPA's
prior is recovered by a normalizing flow (zuko). Test log-likelihood: importance sampling
with a fitted mixture proposal (its Monte-Carlo standard error, Pareto k̂ and ESS), and for
d = 2 also exact grid quadrature as a check.

Run:  python experiments/digits.py [--epochs 150] [--output docs/results/digits.json]
      python experiments/digits.py --quick          (a smoke run, about a minute)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch

from pyro_mapa import BernoulliLikelihood, NormalLikelihood
from pyro_mapa.diagnostics import importance_diagnostics
from pyro_mapa.methods import build_method
from pyro_mapa_experiments.provenance import provenance
from pyro_mapa.training import fit


def load_digits_splits(binarize: bool, seed: int = 0):
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32)
    x = (x > 7).float() if binarize else x / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[:1300]], x[perm[1300:1500]], x[perm[1500:]]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    rows = []
    for kind in ("binarized", "continuous"):
        train, valid, test = load_digits_splits(kind == "binarized")
        if args.quick:
            train, test = train[:300], test[:40]
        lik = BernoulliLikelihood(0.9) if kind == "binarized" else NormalLikelihood(0.1)
        for d in (2, 8):
            for method in ("VAE", "IWAE", "MAPA"):
                pyro.clear_param_store()
                setup = build_method(method, train, lik, latent_dim=d, hidden=(128, 128), seed=0)
                t0 = time.perf_counter()
                res = fit(setup.model, setup.guide, setup.loss, len(train), epochs=args.epochs, num_threads=args.threads,
                          lr=1e-3, progress=not args.quick, desc=f"{kind} d={d} {method}")
                train_s = time.perf_counter() - t0
                learned = setup.learned_model(flow_steps=args.flow_steps)
                est = learned.importance_log_prob(test, num_samples=args.is_samples, fit_steps=args.proposal_steps)
                diag = importance_diagnostics(est.log_weights).summary()
                row = {
                    "data": kind, "latent_dim": d, "method": method,
                    "test_ll_is": float(est.log_px.mean()),
                    "test_ll_is_se": float(est.log_px.std() / math.sqrt(len(test))),
                    "mc_stderr_mean": float(est.stderr.mean()),
                    "pareto_k_max": diag["pareto_k_max"],
                    "share_k_above_0.7": float((importance_diagnostics(est.log_weights).pareto_k > 0.7).mean()),
                    "ess_median": diag["ess_median"],
                    "passes_per_point_per_step": res.passes_per_point,
                    "train_seconds": train_s,
                }
                if d == 2:
                    row["test_ll_quadrature"] = float(learned.log_prob(test, num_points=args.grid).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "settings": {**vars(args), "output": str(args.output)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--flow-steps", type=int, default=2000)
    parser.add_argument("--proposal-steps", type=int, default=2000)
    parser.add_argument("--is-samples", type=int, default=2000)
    parser.add_argument("--grid", type=int, default=301)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.flow_steps, args.proposal_steps, args.is_samples, args.grid = 2, 50, 50, 100, 41
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    start = time.perf_counter()
    out = run(args)
    out["wall_clock_seconds"] = round(time.perf_counter() - start, 1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        out["provenance"] = prov
        args.output.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
