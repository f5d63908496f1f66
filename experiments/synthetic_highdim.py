"""A large synthetic ground truth: a 2-D latent pushed through a fixed random network into 64-D.

z ~ N(0, I_2), x = f(z) + σ ε with f a fixed random MLP (2 → 64 → 64, tanh; seed 0) and
σ = 0.1; N training points (default 100,000), 2,000 validation and 2,000 test points. The
exact log p_true(x) is a 2-D integral (grid quadrature), so the test KL of a learned model
(decoder + recovered prior, also by 2-D quadrature) is exact. Builds the truncated MAPA
table (max_support = 64, timed), trains MAPA (K = 5, S = 5) and a VAE for a few epochs,
and reports the test KL.

Run:  python experiments/synthetic_highdim.py [--num-train 100000] [--epochs 10] [--output ...]
      python experiments/synthetic_highdim.py --quick      (N = 3,000: a smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import pyro
import torch
from torch import nn

from pyro_mapa import NormalLikelihood, PosteriorTable
from pyro_mapa.evaluation import grid_log_likelihood
from pyro_mapa.methods import build_method
from pyro_mapa_experiments.provenance import provenance
from pyro_mapa.training import fit

SIGMA, D_OBS = 0.1, 64


def true_decoder() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, D_OBS))
    return net.requires_grad_(False)


def draw(f: nn.Module, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    return f(z) + SIGMA * torch.randn(n, D_OBS, generator=g)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-support", type=int, default=64)
    parser.add_argument("--grid", type=int, default=301)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    if args.quick:
        args.num_train, args.epochs, args.grid = 3000, 1, 61
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    f = true_decoder()
    train, test = draw(f, args.num_train, 1), draw(f, 2000 if not args.quick else 200, 2)
    lik = NormalLikelihood(SIGMA)
    f64 = lambda z: f(z.float()).double()  # noqa: E731
    true_ll = grid_log_likelihood(test.double(), f64, std_normal_log_prob, lik, [-6, -6], [6, 6], args.grid)
    out = {"settings": vars(args) | {"output": str(args.output)}, "true_test_ll": float(true_ll.mean())}
    t0 = time.perf_counter()
    table = PosteriorTable.from_data(train, lik.kernel(), max_support=args.max_support, progress=not args.quick)
    out["table_seconds"] = time.perf_counter() - t0
    out["peak_rss_mib_after_table"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {}
    for method in ("MAPA", "VAE"):
        pyro.clear_param_store()
        setup = build_method(method, train, lik, latent_dim=2, hidden=(64, 64), seed=0,
                             table=table if method == "MAPA" else None)
        res = fit(setup.model, setup.guide, setup.loss, len(train), epochs=args.epochs, num_threads=args.threads,
                  progress=not args.quick, desc=method)
        learned = setup.learned_model(flow_steps=300 if args.quick else 2000)
        ll = learned.log_prob(test, num_points=args.grid)
        results[method] = {
            "test_ll": float(ll.mean()),
            "test_kl": float((true_ll - ll).mean()),
            "test_kl_se": float((true_ll - ll).std() / math.sqrt(len(test))),
            "seconds_per_epoch": res.seconds_per_epoch,
            "passes_per_point_per_step": res.passes_per_point,
        }
        print(method, json.dumps(results[method]), flush=True)
    out["methods"] = results
    out["wall_clock_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({k: v for k, v in out.items() if k != "methods"}))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        out["provenance"] = prov
        args.output.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
