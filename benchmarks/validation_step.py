"""One SVI step with Pyro's validation on and off (the per-step index checks it switches).

The per-step range checks of minibatch indices (model, guide, codebook, index forcing) run only
while ``pyro.enable_validation()`` is on, Pyro's default; each is a host sync on an accelerator.
This times TraceMAPA_ELBO(5, 5) and TraceIWAE_ELBO(10) steps on figure-8 (batch 100, the small
MLPs) with validation on and off, interleaved over repeats, and reports medians and the ratio.

Run:  python benchmarks/validation_step.py [--repeats 7] [--steps 200] [--threads 1]
Writes benchmarks/results/validation_step.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa_experiments.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "validation_step.json")
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    ds = load_dataset("figure8", num_train=1000, num_valid=10, num_test=10)
    batches = [torch.randperm(1000)[:100] for _ in range(args.steps)]
    steppers = {}
    for method in ("MAPA", "IWAE"):
        pyro.clear_param_store()
        setup = build_method(method, ds.train, ds.likelihood, seed=0)
        steppers[method] = SVI(setup.model, setup.guide, Adam({"lr": 1e-3}), setup.loss).step
    times: dict[str, list[float]] = {}
    before = pyro.infer.is_validation_enabled()
    try:
        for r in range(args.repeats + 1):  # the first round warms up
            for method, step in steppers.items():
                for validate in (True, False):
                    pyro.enable_validation(validate)
                    start = time.perf_counter()
                    for b in batches:
                        step(b)
                    if r:
                        key = f"{method} validation {'on' if validate else 'off'}"
                        times.setdefault(key, []).append((time.perf_counter() - start) / len(batches))
    finally:
        pyro.enable_validation(before)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    ratios = {m: statistics.median(a / b for a, b in zip(times[f"{m} validation on"], times[f"{m} validation off"]))
              for m in steppers}
    print("| step | median ms | on / off |\n|---|---|---|")
    for k, v in ms.items():
        method = k.split()[0]
        print(f"| {k} | {v:.2f} | {ratios[method]:.3f} |" if k.endswith("on") else f"| {k} | {v:.2f} | |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"provenance": prov, "ms_per_step": ms, "ratio_on_over_off": ratios,
                                       "per_repeat_seconds": times}, indent=1) + "\n")


if __name__ == "__main__":
    main()
