"""The table-precision numbers of docs/reliability.md: a table for data far from the origin against a float64 reference.

    python scripts/table_precision.py [--output benchmarks/results/table_precision.json]

For each case it builds ``PosteriorTable.from_data`` (float32 data) and the exact table in float64
from direct differences Σ((a − b)/h)², then reports the mean row total variation between them and
the share of rows whose own point comes first. It uses only the public API, so it runs unchanged on
an older commit (e.g. the one before the distances were centred) for the "before" numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pyro_mapa import GaussianKernel, PosteriorTable

CASES = {
    "[40.7, -74.0] + 0.01 randn(200, 2), h = 0.001": (torch.tensor([40.7, -74.0]), 0.01, (200, 2), 0.001),
    "1000 + randn(200, 4), h = 0.1": (torch.full((4,), 1000.0), 1.0, (200, 4), 0.1),
    "100 + randn(200, 4), h = 0.1": (torch.full((4,), 100.0), 1.0, (200, 4), 0.1),
}


def measure(offset, spread, shape, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (offset + spread * torch.randn(shape, generator=g, dtype=torch.float64)).float()
    table = PosteriorTable.from_data(x, GaussianKernel(h))
    n = shape[0]
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense.scatter_(1, table.indices.long(), table.log_probs.double().exp())
    xd = x.double()
    logk = -0.5 * ((xd.unsqueeze(1) - xd.unsqueeze(0)) / h).pow(2).sum(-1)
    exact = torch.softmax(logk, -1)
    tv = 0.5 * (dense - exact).abs().sum(-1)
    own_first = (table.indices[:, 0].long() == torch.arange(n)).double().mean()
    return {"mean_row_tv": float(tv.mean()), "worst_row_tv": float(tv.max()), "own_row_first": float(own_first)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    out = {name: measure(*case) for name, case in CASES.items()}
    for name, r in out.items():
        print(f"{name}: mean TV {r['mean_row_tv']:.3g}, worst {r['worst_row_tv']:.3g}, own row first {r['own_row_first']:.0%}")
    if args.output:
        args.output.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
