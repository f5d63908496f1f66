"""Smoothed codes (MAPA with code-location entropy) against MAPA and IWAE: digits at d = 8 and d = 2, and the 2-D benchmarks.

MAPA's empiricalized model memorises: each code is a point, so the decoder is fitted at N
points and free between them. With ``build_method("MAPA", ..., options={"tau": τ})`` each
code is a Gaussian of scale ``τ s`` (``s`` the codes' spread) and the model's prior is the
mixture over codes (``CodeMixturePrior``), evaluated as it is: exactly on a grid for
``d <= 2``, and for ``d = 8`` by importance sampling with ``CodeMixtureProposal`` (the codes
of the 50 kernel-nearest training points, weighted by the model's likelihood at each code, plus a
10 % defensive share of the prior), with Pareto k̂. τ is chosen on the validation log-likelihood; τ = 0 is today's MAPA (prior
recovered by a flow, d > 1, or a copula, d = 1). IWAE has the same networks.

Run:  python experiments/smoothed_mapa.py [--output docs/results/smoothed_mapa.json]
      python experiments/smoothed_mapa.py --kinds continuous --benchmarks --output docs/results/smoothed_mapa_continuous.json
      python experiments/smoothed_mapa.py --quick          (a smoke run)
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
from pyro_mapa.evaluation import CodeMixtureProposal
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method

from digits import load_digits_splits  # noqa: E402  (experiments/ is the working directory's sibling)


def evaluate_importance(setup, learned, x, args, seed=0):
    """Importance-sampled log p(x): the code proposal for smoothed MAPA, a fitted mixture otherwise."""
    proposal = None
    cb = getattr(setup.model, "codebook", None)
    if cb is not None and getattr(cb, "tau", 0.0) > 0:
        with torch.no_grad():
            codes = cb.codes()
        decoder, lik = setup.decoder, setup.likelihood
        proposal = CodeMixtureProposal(
            cb.data, codes, cb.smoothing_scale(), lik.kernel(), num_components=min(50, len(codes)), widen=1.0,
            log_likelihood=lambda xb, z: lik(decoder(z)).log_prob(xb),
        )
    est = learned.importance_log_prob(x, num_samples=args.is_samples, fit_steps=args.proposal_steps, seed=seed,
                                      proposal=proposal)
    k = torch.as_tensor(importance_diagnostics(est.log_weights).pareto_k)
    return {"ll": float(est.log_px.mean()), "mc_se": float(est.stderr.pow(2).sum().sqrt() / len(x)),
            "share_k_above_0.7": float((k > 0.7).double().mean())}


def train(method, x, lik, d, args, tau=0.0, seed=0):
    pyro.clear_param_store()
    options = {"tau": tau} if tau else None
    setup = build_method(method, x, lik, latent_dim=d, hidden=tuple(args.hidden), seed=seed, options=options)
    t0 = time.perf_counter()
    setup.train(len(x), epochs=args.epochs, batch_size=100, lr=1e-3, seed=seed, progress=not args.quick)
    return setup, time.perf_counter() - t0


def digits_rows(args) -> list[dict]:
    rows = []
    for kind in args.kinds:
        rows += _digits_rows(args, kind)
    return rows


def _digits_rows(args, kind: str) -> list[dict]:
    rows = []
    train_x, valid_x, test_x = load_digits_splits(binarize=kind == "binarized")
    if args.quick:
        train_x, valid_x, test_x = train_x[:200], valid_x[:40], test_x[:40]
    lik = BernoulliLikelihood(0.9) if kind == "binarized" else NormalLikelihood(0.1)
    for d in args.digits_dims:
        for method, tau in [("IWAE", 0.0)] + [("MAPA", t) for t in args.taus]:
            setup, secs = train(method, train_x, lik, d, args, tau)
            learned = setup.learned_model(flow_steps=args.flow_steps)
            row = {"data": f"{kind} digits", "latent_dim": d, "method": method, "tau": tau,
                   "train_seconds": round(secs, 1)}
            if d <= 2:
                row["valid_ll"] = float(learned.log_prob(valid_x, num_points=args.grid).mean())
                row["test_ll_exact"] = float(learned.log_prob(test_x, num_points=args.grid).mean())
            else:
                row["valid_ll"] = evaluate_importance(setup, learned, valid_x, args)["ll"]
            row["test_importance"] = evaluate_importance(setup, learned, test_x, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def benchmark_rows(args) -> list[dict]:
    rows = []
    for name in args.benchmarks:
        for draw in range(args.draws):
            ds = load_dataset(name, num_train=args.bench_train, num_valid=500, num_test=1000, seed=draw)
            for method, tau in [("IWAE", 0.0)] + [("MAPA", t) for t in args.taus]:
                setup, secs = train(method, ds.train, ds.likelihood, 1, args, tau, seed=draw)
                learned = setup.learned_model()
                valid = float(learned.log_prob(ds.valid).mean())
                test = learned.log_prob(ds.test)
                kl = float((ds.true_log_prob(ds.test).double() - test.double()).mean())
                row = {"data": name, "draw": draw, "method": method, "tau": tau, "valid_ll": valid,
                       "test_kl": kl, "train_seconds": round(secs, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.0])
    p.add_argument("--digits-dims", type=int, nargs="+", default=[8, 2])
    p.add_argument("--kinds", nargs="+", default=["binarized"], choices=["binarized", "continuous"],
                   help="digits pixels binarized (Bernoulli, rho 0.9) or scaled to [0, 1] (Gaussian, sigma 0.1)")
    p.add_argument("--benchmarks", nargs="*", default=["figure8", "circle"])
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--bench-train", type=int, default=1000)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--flow-steps", type=int, default=1000)
    p.add_argument("--proposal-steps", type=int, default=1000)
    p.add_argument("--is-samples", type=int, default=1000)
    p.add_argument("--grid", type=int, default=201)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    if args.quick:
        args.epochs, args.flow_steps, args.proposal_steps, args.is_samples, args.grid = 2, 50, 50, 100, 41
        args.bench_train, args.hidden = 200, [20, 20]
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "digits": digits_rows(args), "benchmarks": benchmark_rows(args)}
    out["wall_clock_seconds"] = round(time.perf_counter() - start, 1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
