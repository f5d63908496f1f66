"""Recall and speed of the HNSW neighbour backend, and the error of the sampled normalizer.

For each N (D = 64 Gaussian data, M = 32, kernel bandwidth 4): the exact table, the HNSW
table with the exact normalizer, and the HNSW table with the sampled normalizer
(R = 2048 columns). Reports build times, recall@M (share of the exact top-M found), and
the sampled normalizer's mean absolute error against the exact one next to its mean
reported standard error.

Run:  python benchmarks/approx_neighbors.py [--sizes 30000 100000] [--threads 2]
Writes benchmarks/results/approx_neighbors.json. Needs faiss-cpu.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyro_mapa import GaussianKernel, PosteriorTable
from pyro_mapa_experiments.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30000, 100000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "approx_neighbors.json")
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
        k = GaussianKernel(4.0)
        t0 = time.perf_counter()
        exact = PosteriorTable.from_data(x, k, max_support=32, progress=False)
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        hnsw = PosteriorTable.from_data(x, k, max_support=32, neighbors="hnsw")
        t_hnsw = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampled = PosteriorTable.from_data(x, k, max_support=32, neighbors="hnsw", normalizer="sampled",
                                           num_normalizer_samples=2048)
        t_sampled = time.perf_counter() - t0
        a, b = torch.sort(exact.indices, 1).values, torch.sort(hnsw.indices, 1).values
        found = sum(len(set(r.tolist()) & set(s.tolist())) for r, s in zip(a, b))
        err = (sampled.log_normalizer - exact.log_normalizer).abs()
        row = {
            "n": n, "exact_s": t_exact, "hnsw_exact_normalizer_s": t_hnsw, "hnsw_sampled_normalizer_s": t_sampled,
            "recall_at_m": found / exact.indices.numel(),
            "sampled_log_normalizer_mean_abs_error": float(err.mean()),
            "sampled_log_normalizer_mean_reported_se": float(sampled.log_normalizer_se.mean()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"command": "python benchmarks/approx_neighbors.py --sizes " + " ".join(map(str, args.sizes))
            + f" --threads {args.threads}", "setting": "D=64, M=32, Gaussian kernel h=4, R=2048"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows, "provenance": prov}, indent=2) + "\n")


if __name__ == "__main__":
    main()
