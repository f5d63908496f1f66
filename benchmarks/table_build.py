"""Time and peak memory of building a truncated MAPA table, against scikit-learn brute-force kNN.

For each N (D = 64 Gaussian data, M = 32 kept entries per row) this runs, in a fresh
subprocess each (so peak RSS is per case):
  - ours:    PosteriorTable.from_data(X, GaussianKernel(h), max_support=M)
             (top-M indices AND the exact log-normalizer over all N);
  - sklearn: NearestNeighbors(n_neighbors=M, algorithm="brute").fit(X).kneighbors(X)
             (neighbours only), in the same process as ours, after it;
checks that the top-M index sets agree, and fits time = c · N^p on log-log.

Run:  python benchmarks/table_build.py [--sizes 10000 30000 100000] [--threads 2]
Writes benchmarks/results/table_build.json and prints a Markdown table.
Needs scikit-learn (pip install scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

from pyro_mapa_experiments.provenance import provenance

CASE = r"""
import json, resource, sys, time, torch
from pyro_mapa import GaussianKernel, PosteriorTable
n, d, m, threads, chunk = map(int, sys.argv[1:6])
torch.set_num_threads(threads)
x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
table = PosteriorTable.from_data(x, GaussianKernel(4.0), max_support=m, chunk_size=chunk or None, progress=False)
ours = time.perf_counter() - t0
peak_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from threadpoolctl import threadpool_limits
from sklearn.neighbors import NearestNeighbors
with threadpool_limits(threads):
    t0 = time.perf_counter()
    _, idx = NearestNeighbors(n_neighbors=m, algorithm="brute").fit(x.numpy()).kneighbors(x.numpy())
    sk = time.perf_counter() - t0
same = float((torch.sort(torch.from_numpy(idx), 1).values == torch.sort(table.indices, 1).values).all(1).float().mean())
print(json.dumps({"n": n, "ours_s": ours, "sklearn_s": sk, "rows_identical": same,
                  "peak_rss_mib_ours": (peak_ours) / 1024, "rss_before_mib": base / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--support", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=0, help="query rows per block (0: the library default)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "table_build.json")
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, "-c", CASE, str(n), str(args.dim), str(args.support), str(args.threads), str(args.chunk)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if len(rows) > 1:
        xs = [math.log(r["n"]) for r in rows]
        ys = [math.log(r["ours_s"]) for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    else:
        slope = float("nan")
    meta = {
        "command": "python benchmarks/table_build.py --sizes " + " ".join(map(str, args.sizes))
        + f" --threads {args.threads}" + (f" --chunk {args.chunk}" if args.chunk else ""),
        "machine": f"{platform.machine()}, {args.threads} threads",
        "setting": f"D={args.dim}, M={args.support}, float32, Gaussian data",
        "loglog_slope_ours": slope,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows, "provenance": prov}, indent=2) + "\n")
    print("| N | ours (s) | sklearn brute kNN (s) | ratio | top-M identical | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['ours_s']:.2f} | {r['sklearn_s']:.2f} | {r['ours_s'] / r['sklearn_s']:.2f} | "
              f"{r['rows_identical']:.4f} | {r['peak_rss_mib_ours']:.0f} |")
    print(f"time ~ N^{slope:.2f}")


if __name__ == "__main__":
    main()
