"""Where the time of a small-network MAPA step goes (figure-8), against the plain-PyTorch floor.

Times, in process CPU time (robust to other processes on a shared machine), interleaved
over repeats, the median per part:
  - SVI.step with pyro.optim.Adam (what users run), with Pyro validation on (Pyro's
    default) and off;
  - TraceMAPA_ELBO.loss_and_grads followed by one torch.optim.Adam over all parameters
    (a Pyro ELBO in a plain PyTorch loop);
  - the ELBO's forward (differentiable_loss) and its traced model run (_run);
  - the plain-PyTorch step of benchmarks/step_time.py (the floor), forward and backward;
  - parts shared by both: the table draws (top_k + sample_remainder), the codebook;
  - Pyro's optimizer wrapper (one torch Adam per parameter tensor) against one torch Adam;
and counts the dispatched tensor ops and host reads of one step.

Run:  python benchmarks/profile_small.py [--repeats 7] [--steps 50]
Writes benchmarks/results/profile_small.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa_experiments.provenance import provenance

try:
    from step_time import PlainMAPAStep
except ImportError:  # run from the repository root
    from benchmarks.step_time import PlainMAPAStep


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "profile_small.json")
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=None)  # the code that runs: taken first
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    ds = load_dataset("figure8", num_train=1000, num_valid=10, num_test=10)
    mapa = build_method("MAPA", ds.train, ds.likelihood, num_top=5, num_samples=5)
    table, model, guide, elbo = mapa.guide.table, mapa.model, mapa.guide, mapa.loss
    cb, k, s = model.codebook, 5, 5
    svi = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
    params = list(cb.parameters())
    one_adam = torch.optim.Adam(params, lr=1e-3)
    floor = PlainMAPAStep(build_method("MAPA", ds.train, ds.likelihood, table=table), k, s)
    batches = [torch.randperm(1000)[:100] for _ in range(args.steps)]

    def plain_forward(b):
        top, rest = table.top_k(b, k), table.sample_remainder(b, k, s)
        idx = torch.cat([top.indices, rest.indices], 1)
        corr = torch.cat([torch.zeros_like(top.log_probs), rest.log_probs + math.log(s)], 1)
        ll = torch.distributions.Normal(cb(idx), ds.likelihood.sigma).log_prob(cb.data[b].unsqueeze(1)).sum(-1)
        return -(1000 / len(b)) * torch.logsumexp(ll - math.log(1000) - corr, 1).sum()

    def elbo_torch_adam(b):
        elbo.loss_and_grads(model, guide, b)
        one_adam.step()
        one_adam.zero_grad()

    for b in batches[:10]:
        svi.step(b)
        elbo_torch_adam(b)
        floor(b)
    validation = {"on": True, "off": False}
    parts = {
        "SVI.step, pyro.optim.Adam, validation on (default)": (svi.step, "on"),
        "SVI.step, pyro.optim.Adam, validation off": (svi.step, "off"),
        "loss_and_grads + one torch.optim.Adam, validation off": (elbo_torch_adam, "off"),
        "plain-PyTorch step (the floor), validation on": (floor, "on"),
        "plain-PyTorch step (the floor), validation off": (floor, "off"),
        "ELBO forward (differentiable_loss), validation off": (lambda b: elbo.differentiable_loss(model, guide, b), "off"),
        "  of which the traced model run (_run)": (lambda b: elbo._run(model, guide, (b,), {}), "off"),
        "plain forward (floor), validation off": (plain_forward, "off"),
        "  shared: table draws (top_k + sample_remainder)": (lambda b: (table.top_k(b, k), table.sample_remainder(b, k, s)), "off"),
        "  shared: codebook on 1000 indices": (lambda b: cb(torch.randint(1000, (100, 10))), "off"),
        "pyro.optim.Adam step (12 torch optimizers, one per tensor)": (lambda b: svi.optim(params), "off"),
        "one torch.optim.Adam step over the 12 tensors": (lambda b: one_adam.step(), "off"),
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.repeats):
        for name, (fn, val) in parts.items():
            pyro.enable_validation(validation[val])
            for p in params:  # the optimizer rows need gradients (zero_grad() leaves None)
                p.grad = 1e-3 * torch.randn_like(p)
            start = time.process_time()
            for b in batches:
                fn(b)
            times[name].append(1e6 * (time.process_time() - start) / len(batches))
    pyro.enable_validation(True)
    floor_key = {"on": "plain-PyTorch step (the floor), validation on", "off": "plain-PyTorch step (the floor), validation off"}
    rows = []
    for name, (_, val) in parts.items():
        ratio = [a / b for a, b in zip(times[name], times[floor_key[val]])]
        rows.append({"part": name, "validation": val, "us": round(statistics.median(times[name])),
                     "vs_floor": round(statistics.median(ratio), 2),
                     "vs_floor_range": [round(min(ratio), 2), round(max(ratio), 2)]})
    counts = {}
    for val in ("on", "off"):
        pyro.enable_validation(validation[val])
        for name, fn in (("SVI.step", svi.step), ("floor", floor)):
            counter = _OpCounter()
            with counter:
                fn(batches[0])
            counts[f"{name}, validation {val}"] = {
                "tensor_ops": sum(counter.ops.values()), "host_reads": counter.ops["_local_scalar_dense"]}
    pyro.enable_validation(True)
    meta = {
        "command": f"python benchmarks/profile_small.py --repeats {args.repeats} --steps {args.steps}",
        "machine": f"{platform.machine()} 1 torch thread, process CPU time",
        "torch": torch.__version__, "pyro": pyro.__version__,
        "setting": "figure-8, N=1000, batch 100, MLPs 2x50, d=1, MAPA(5, 5); median over repeats of the "
                   "per-step CPU microseconds; ratios within repeats",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows, "op_counts": counts, "provenance": prov}, indent=2) + "\n")
    print("| part | CPU µs / step | vs floor, same validation (range) |")
    print("|---|---|---|")
    for r in rows:
        lo, hi = r["vs_floor_range"]
        print(f"| {r['part']} | {r['us']} | {r['vs_floor']:.2f} ({lo:.2f}-{hi:.2f}) |")
    print(json.dumps(counts))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
