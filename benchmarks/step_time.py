"""Per-step and per-epoch time of the compared objectives on figure-8 (batch 100, the small MLPs).

Times one SVI step (forward, backward, Adam) of
  - TraceMAPA_ELBO(K=5, S=5)       (pyro_mapa, EmpiricalizedModel + MAPAGuide)
  - the same ELBO in a plain PyTorch loop (loss_and_grads + one torch.optim.Adam, no SVI)
  - a plain-PyTorch MAPA step      (the same bound written without Pyro: the floor)
  - TraceIWAE_ELBO(10)             (pyro_mapa, VAEModel + MeanFieldGuide)
  - TraceIWAE_ELBO(10, dreg=True)
  - RenyiELBO(alpha=0, 10)         (Pyro's IWAE, vectorized particles)
  - Trace_ELBO                     (the VAE)
all in one process, interleaved over repeats, reporting the median.

Run:  python benchmarks/step_time.py [--repeats 5] [--steps 100] [--threads 2]
Writes benchmarks/results/step_time.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam

from pyro_mapa import TraceIWAE_ELBO
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa_experiments.provenance import provenance


class PlainMAPAStep:
    """The MAPA bound in plain PyTorch: the floor a Pyro-level step is compared with."""

    def __init__(self, setup, num_top: int, num_samples: int, lr: float = 1e-3) -> None:
        self.cb = setup.model.codebook
        self.table = setup.guide.table
        self.sigma = setup.likelihood.sigma
        self.k, self.s = num_top, num_samples
        self.n = self.cb.num_codes
        self.opt = torch.optim.Adam(self.cb.parameters(), lr=lr)

    def __call__(self, batch: torch.Tensor) -> float:
        top = self.table.top_k(batch, self.k)
        rest = self.table.sample_remainder(batch, self.k, self.s)
        idx = torch.cat([top.indices, rest.indices], 1)  # (B, K+S)
        corr = torch.cat([torch.zeros_like(top.log_probs), rest.log_probs + math.log(self.s)], 1)
        means = self.cb(idx)  # (B, K+S, D), unique rows only
        x = self.cb.data[batch].unsqueeze(1)
        ll = torch.distributions.Normal(means, self.sigma).log_prob(x).sum(-1)
        per_point = torch.logsumexp(ll - math.log(self.n) - corr, dim=1)
        loss = -(self.n / len(batch)) * per_point.sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class TorchLoopStep:
    """A Pyro ELBO in a plain PyTorch loop: ``loss_and_grads``, then one ``torch.optim.Adam`` over all parameters."""

    def __init__(self, setup, lr: float = 1e-3) -> None:
        self.setup = setup
        self.opt = torch.optim.Adam(setup.model.parameters(), lr=lr)

    def __call__(self, batch: torch.Tensor) -> float:
        loss = self.setup.loss.loss_and_grads(self.setup.model, self.setup.guide, batch)
        self.opt.step()
        self.opt.zero_grad()
        return loss


def make_steppers(x, likelihood):
    steppers = {}
    pyro.clear_param_store()
    mapa = build_method("MAPA", x, likelihood, num_top=5, num_samples=5)
    steppers["TraceMAPA_ELBO(5, 5)"] = SVI(mapa.model, mapa.guide, Adam({"lr": 1e-3}), mapa.loss).step
    loop = build_method("MAPA", x, likelihood, table=mapa.guide.table)
    steppers["TraceMAPA_ELBO(5, 5), torch.optim.Adam loop"] = TorchLoopStep(loop)
    floor = build_method("MAPA", x, likelihood, table=mapa.guide.table)
    steppers["plain PyTorch MAPA(5, 5)"] = PlainMAPAStep(floor, 5, 5)
    for name, loss in [
        ("TraceIWAE_ELBO(10)", TraceIWAE_ELBO(10, max_plate_nesting=1)),
        ("TraceIWAE_ELBO(10, dreg)", TraceIWAE_ELBO(10, dreg=True, max_plate_nesting=1)),
        ("RenyiELBO(alpha=0, 10)", RenyiELBO(alpha=0, num_particles=10, vectorize_particles=True, max_plate_nesting=1)),
        ("Trace_ELBO", Trace_ELBO(max_plate_nesting=1)),
    ]:
        setup = build_method("VAE", x, likelihood)
        steppers[name] = SVI(setup.model, setup.guide, Adam({"lr": 1e-3}), loss).step
    return steppers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "step_time.json")
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    ds = load_dataset("figure8", num_train=1000, num_valid=10, num_test=10)
    x, n, batch = ds.train, 1000, 100
    # The models share param names ("codebook", or "encoder"/"decoder"): each objective gets
    # its own param store, swapped in around its blocks (outside the timing), so that every
    # SVI optimizes its own networks.
    steppers = make_steppers(x, ds.likelihood)
    batches = [torch.randperm(n)[:batch] for _ in range(args.steps)]
    states: dict[str, dict] = {}

    def block(name, step, bs) -> float:
        store = pyro.get_param_store()
        store.clear()
        if name in states:
            store.set_state(states[name])
        start = time.perf_counter()
        for b in bs:
            step(b)
        elapsed = time.perf_counter() - start
        states[name] = store.get_state()
        store.clear()
        return elapsed

    for name, step in steppers.items():  # warm-up (plate-nesting guesses, caches, allocator)
        block(name, step, batches[:20])
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(args.repeats):
        for name, step in steppers.items():
            times[name].append(block(name, step, batches) / len(batches))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    # Ratios per repeat (the objectives of one repeat ran back to back, under the same
    # machine load), then their median and range: steadier than a ratio of medians.
    floor_t, renyi_t = times["plain PyTorch MAPA(5, 5)"], times["RenyiELBO(alpha=0, 10)"]
    rows = []
    for name, t in ms.items():
        vs_floor = [a / b for a, b in zip(times[name], floor_t)]
        vs_renyi = [a / b for a, b in zip(times[name], renyi_t)]
        rows.append(
            {
                "objective": name,
                "ms_per_step": round(t, 3),
                "seconds_per_epoch": round(t * (n // batch) / 1e3, 4),
                "vs_plain_mapa": round(statistics.median(vs_floor), 2),
                "vs_plain_mapa_range": [round(min(vs_floor), 2), round(max(vs_floor), 2)],
                "vs_renyi": round(statistics.median(vs_renyi), 2),
                "vs_renyi_range": [round(min(vs_renyi), 2), round(max(vs_renyi), 2)],
            }
        )
    meta = {
        "command": "python benchmarks/step_time.py " + f"--repeats {args.repeats} --steps {args.steps} --threads {args.threads}",
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "setting": "figure-8, N=1000, batch 100, MLPs 2x50 LeakyReLU, d=1, Adam 1e-3; median over repeats",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows, "provenance": prov}, indent=2) + "\n")
    print("| objective | ms / step | s / epoch (10 steps) | vs plain MAPA (range) | vs RenyiELBO (range) |")
    print("|---|---|---|---|---|")
    for r in rows:
        a, b = r["vs_plain_mapa_range"], r["vs_renyi_range"]
        print(
            f"| {r['objective']} | {r['ms_per_step']:.2f} | {r['seconds_per_epoch']:.3f} | "
            f"{r['vs_plain_mapa']:.2f} ({a[0]:.2f}-{a[1]:.2f}) | {r['vs_renyi']:.2f} ({b[0]:.2f}-{b[1]:.2f}) |"
        )
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
