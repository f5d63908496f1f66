"""Step time where the networks dominate the cost, early (steps 1-10) and late (steps 200-210).

Setting: N = 5000 points of an 8-D manifold mapped into D = 784 by a fixed
random MLP plus N(0, 0.1²) noise; d = 8; batch 100; Adam 1e-3; NormalLikelihood(0.1).
Two network regimes:
  - "equal":       encoder and decoder MLPs 2x512;
  - "big decoder": decoder 2x1024, encoder 2x256 (the decoder about four times the encoder's cost).
Objectives, each with its own networks and param store, all in one process:
  TraceMAPA_ELBO(5, 5), TraceMAPA_ELBO(3, 3), MAPA(5, 5) with free codes (FreeCodebook),
  TraceIWAE_ELBO(10), TraceIWAE_ELBO(10, dreg=True), RenyiELBO(alpha=0, 10), Trace_ELBO.
After 5 untimed warm-up steps of every objective on throwaway networks (allocator, thread
pool, caches), every objective is stepped round-robin, one step each in turn, on the same
minibatches (so the machine load is shared alike):
  - early: in each repeat r, fresh networks (seed r) run steps 1-10;
  - the networks of repeat 0 then run steps 11-199, and in repeat r steps
    200 + 11 r .. 210 + 11 r (the late block; repeat 0 is steps 200-210).
The objectives' order rotates between repeats. Per step, the wall time and the process CPU
time of one SVI step (forward, backward, Adam; the param-store swap between objectives is
outside the timing) are recorded; a block's time is the median over its steps. Ratios
(late/early, objective/IWAE(10)) are taken within a repeat, then their median and range
over repeats are reported. The load average (os.getloadavg) is recorded per block: on a
shared machine the ratios within repeats, and CPU times, are the figures to trust.

Run:  python benchmarks/big_networks.py [--repeats 3] [--threads 2] [--quick] [--unmasked]
           [--regimes equal "big decoder"] [--objectives NAME ...]
Writes benchmarks/results/big_networks.json and prints Markdown tables. --quick is a CI-sized
smoke run (seconds; N = 300, D = 32, d = 4, networks 2x32, or 2x16 / 2x64; 2 warm-up, 2 early
and 3 late steps per repeat; one thread) written to <tmpdir>/big_networks_quick.json.
--unmasked adds TraceMAPA_ELBO(5, 5) and TraceIWAE_ELBO(10) with the negligible-weight mask off
(the computation before that mask was added), interleaved with the masked ones: a before/after on the
same machine (big_networks_unmasked.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from pyro_mapa import (
    AmortizedCodebook,
    EmpiricalizedModel,
    MAPAGuide,
    MeanFieldGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    VAEModel,
    mlp,
)
from pyro_mapa_experiments.provenance import provenance
from pyro_mapa.infer import _importance_elbo
from pyro_mapa.models.free_codebook import FreeCodebook

OBJECTIVES = (
    "TraceMAPA_ELBO(5, 5)",
    "TraceMAPA_ELBO(3, 3)",
    "MAPA(5, 5), free codes",
    "TraceIWAE_ELBO(10)",
    "TraceIWAE_ELBO(10, dreg)",
    "RenyiELBO(alpha=0, 10)",
    "Trace_ELBO",
)
REFERENCE = "TraceIWAE_ELBO(10)"
UNMASKED = ", unmasked"


def manifold_data(n: int, dim: int, latent: int, noise: float, seed: int = 0) -> torch.Tensor:
    """``n`` points ``f(z) + noise · ε`` with ``z ~ N(0, I_latent)`` and ``f`` a fixed random tanh MLP.

    ``f`` is ``latent -> 256 -> dim`` with PyTorch's default initialisation, its output
    scaled to unit standard deviation per coordinate on average.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    f = mlp(latent, dim, (256,), activation=nn.Tanh)
    with torch.no_grad():
        z = torch.randn(n, latent, generator=g)
        clean = f(z)
        clean = (clean - clean.mean(0)) / clean.std(0).mean()
        return clean + noise * torch.randn(n, dim, generator=g)


@dataclass
class Stepper:
    """One objective: its SVI step and its own param store (swapped in around each step, untimed)."""

    name: str
    step_fn: Callable[[torch.Tensor], float]
    state: dict | None = None
    counter: object | None = None  # the codebook, for pass counts

    def step(self, batch: torch.Tensor) -> tuple[float, float]:
        """One SVI step; returns its (wall, process CPU) seconds."""
        store = pyro.get_param_store()
        store.clear()
        if self.state is not None:
            store.set_state(self.state)
        wall, cpu = time.perf_counter(), time.process_time()
        self.step_fn(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.state = store.get_state()
        store.clear()
        return wall, cpu


def run_interleaved(steppers: list[Stepper], batches: list[torch.Tensor]) -> dict[str, list[tuple[float, float]]]:
    """Runs ``batches`` through every stepper, round-robin per step (same machine load for all)."""
    out: dict[str, list[tuple[float, float]]] = {s.name: [] for s in steppers}
    for b in batches:
        for s in steppers:
            out[s.name].append(s.step(b))
    return out


def _unmasked(step_fn: Callable[[torch.Tensor], float]) -> Callable[[torch.Tensor], float]:
    """The step with the negligible-weight mask turned off (as before the mask was added), for before/after runs."""

    def step(batch: torch.Tensor) -> float:
        saved = _importance_elbo.negligible_log_ratio  # the one place both ELBOs read it
        _importance_elbo.negligible_log_ratio = lambda dtype: math.inf
        try:
            return step_fn(batch)
        finally:
            _importance_elbo.negligible_log_ratio = saved

    return step


def make_steppers(x, likelihood, table, latent, enc_hidden, dec_hidden, seed, objectives=OBJECTIVES) -> list[Stepper]:
    n, dim = x.shape
    out = []

    def nets(mean_field: bool):
        torch.manual_seed(seed)
        dec = mlp(latent, dim, dec_hidden)
        enc = mlp(dim, 2 * latent if mean_field else latent, enc_hidden)
        return enc, dec

    for name in objectives:
        base = name.removesuffix(UNMASKED)
        if "MAPA" in name:
            k = 3 if "(3, 3)" in name else 5
            enc, dec = nets(False)
            cb = FreeCodebook(n, latent, dec, x) if "free" in name else AmortizedCodebook(enc, dec, x)
            model = EmpiricalizedModel(cb, likelihood)
            guide = MAPAGuide(table, site="c", plate="data")
            loss = TraceMAPA_ELBO(k, k, max_plate_nesting=1)
        else:
            enc, dec = nets(True)
            cb = None
            model, guide = VAEModel(dec, x, latent, likelihood), MeanFieldGuide(enc, x, latent)
            loss = {
                "TraceIWAE_ELBO(10)": lambda: TraceIWAE_ELBO(10, max_plate_nesting=1),
                "TraceIWAE_ELBO(10, dreg)": lambda: TraceIWAE_ELBO(10, dreg=True, max_plate_nesting=1),
                "RenyiELBO(alpha=0, 10)": lambda: RenyiELBO(
                    alpha=0, num_particles=10, vectorize_particles=True, max_plate_nesting=1
                ),
                "Trace_ELBO": lambda: Trace_ELBO(max_plate_nesting=1),
            }[base]()
        svi = SVI(model, guide, Adam({"lr": 1e-3}), loss)
        out.append(Stepper(name, _unmasked(svi.step) if name.endswith(UNMASKED) else svi.step, counter=cb))
    return out


def run_regime(x, likelihood, table, latent, enc_hidden, dec_hidden, args, label) -> dict:
    """Early blocks on fresh networks (one set per repeat); late blocks on the networks of repeat 0,
    trained to ``late_start`` and then timed in ``repeats`` consecutive blocks of ``late_len`` steps."""
    n = x.shape[0]
    g = torch.Generator().manual_seed(1000)
    total = args.late_start - 1 + args.repeats * args.late_len
    batches = [torch.randperm(n, generator=g)[: args.batch] for _ in range(total)]
    wall0 = time.perf_counter()
    # Warm-up on throwaway networks: the allocator, thread pool and caches reach their steady
    # state here, so that steps 1-10 below measure fresh networks, not a cold process.
    run_interleaved(make_steppers(x, likelihood, table, latent, enc_hidden, dec_hidden, 99, args.objectives),
                    batches[: args.warmup])
    sets = [make_steppers(x, likelihood, table, latent, enc_hidden, dec_hidden, r, args.objectives)
            for r in range(args.repeats)]
    names = [s.name for s in sets[0]]
    loads, early, late = [], [], []
    for r, steppers in enumerate(sets):  # steps 1..early on fresh networks, objectives in rotated order
        order = steppers[r % len(steppers):] + steppers[: r % len(steppers)]
        loads.append(("early", r, os.getloadavg()))
        early.append(run_interleaved(order, batches[: args.early]))
        print(f"[{label}] early block {r} done at {time.perf_counter() - wall0:.0f} s", flush=True)
    trained = sets[0]
    loads.append(("middle", 0, os.getloadavg()))
    run_interleaved(trained, batches[args.early : args.late_start - 1])
    for r in range(args.repeats):  # steps late_start + r*late_len ...
        start = args.late_start - 1 + r * args.late_len
        for s in trained:
            if s.counter is not None:
                s.counter.reset_counts()
        order = trained[r % len(trained):] + trained[: r % len(trained)]
        loads.append(("late", r, os.getloadavg()))
        late.append(run_interleaved(order, batches[start : start + args.late_len]))
        print(f"[{label}] late block {r} done at {time.perf_counter() - wall0:.0f} s", flush=True)
    loads.append(("end", args.repeats - 1, os.getloadavg()))
    passes = {
        s.name: [round(s.counter.encoder_passes / (args.batch * args.late_len), 2),
                 round(s.counter.decoder_passes / (args.batch * args.late_len), 2)]
        for s in trained if s.counter is not None
    }

    def med(block, name, k):  # k = 0: wall, 1: CPU; milliseconds
        return 1e3 * statistics.median(t[k] for t in block[name])

    rows = []
    for name in names:
        row = {"objective": name}
        for k, clock in ((0, "wall"), (1, "cpu")):
            e = [med(b, name, k) for b in early]
            lt = [med(b, name, k) for b in late]
            row[f"{clock}_ms_early"] = round(statistics.median(e), 2)
            row[f"{clock}_ms_late"] = round(statistics.median(lt), 2)
            row[f"{clock}_late_over_early"] = _summary([b / a for a, b in zip(e, lt)])
            row[f"{clock}_vs_iwae10_early"] = _summary([med(b, name, k) / med(b, REFERENCE, k) for b in early])
            row[f"{clock}_vs_iwae10_late"] = _summary([med(b, name, k) / med(b, REFERENCE, k) for b in late])
        row["passes_per_point_late"] = passes.get(name)
        rows.append(row)
    last = args.late_start - 1 + args.repeats * args.late_len
    print(f"[{label}] {time.perf_counter() - wall0:.0f} s", flush=True)
    return {
        "label": label,
        "encoder_hidden": list(enc_hidden),
        "decoder_hidden": list(dec_hidden),
        "warmup_steps": f"{args.warmup} on throwaway networks, untimed",
        "early_steps": f"1-{args.early} (fresh networks in each repeat)",
        "late_steps": f"{args.late_start}-{last} (repeat r: {args.late_len} steps from {args.late_start} + "
        f"{args.late_len} r, networks of repeat 0)",
        "wall_s": round(time.perf_counter() - wall0, 1),
        "loadavg": [[phase, r, [round(v, 2) for v in la]] for phase, r, la in loads],
        "rows": rows,
        "per_repeat_ms": {
            "early": [{k: [round(1e3 * t[0], 2) for t in v] for k, v in b.items()} for b in early],
            "late": [{k: [round(1e3 * t[0], 2) for t in v] for k, v in b.items()} for b in late],
        },
    }


def markdown(reg: dict) -> str:
    """The regime's table: wall-clock ms per step (CPU ms), ratios with their range over repeats."""
    lines = [
        "| objective | ms/step, steps 1-10 (CPU) | ms/step, late (CPU) | late / early (range) | "
        "vs IWAE(10), early (range) | vs IWAE(10), late (range) | vs IWAE(10), late, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reg["rows"]:
        def f(key):
            v = r[key]
            return f"{v['median']:.2f} ({v['range'][0]:.2f}-{v['range'][1]:.2f})"
        lines.append(
            f"| {r['objective']} | {r['wall_ms_early']:.1f} ({r['cpu_ms_early']:.1f}) | "
            f"{r['wall_ms_late']:.1f} ({r['cpu_ms_late']:.1f}) | {f('wall_late_over_early')} | "
            f"{f('wall_vs_iwae10_early')} | {f('wall_vs_iwae10_late')} | {r['cpu_vs_iwae10_late']['median']:.2f} |"
        )
    return "\n".join(lines)


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "range": [round(min(values), 3), round(max(values), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (seconds)")
    parser.add_argument("--regimes", nargs="+", default=["equal", "big decoder"], choices=["equal", "big decoder"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES,
                        help="a subset (TraceIWAE_ELBO(10) is always included: the reference)")
    parser.add_argument("--unmasked", action="store_true",
                        help="also time TraceMAPA_ELBO(5, 5) and TraceIWAE_ELBO(10) with the negligible-weight "
                        "mask off (before/after the mask), interleaved with the masked ones")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    prov = provenance(vars(args), jobs=1, threads_per_job=args.threads)  # the code that runs: taken first
    objectives = [o for o in OBJECTIVES if o in args.objectives or o == REFERENCE]
    base_objectives = list(objectives)
    if args.unmasked:
        objectives += [o + UNMASKED for o in ("TraceMAPA_ELBO(5, 5)", REFERENCE)]
    args.objectives = objectives
    args.threads = args.threads or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    if args.quick:
        n, dim, latent, batch, support = 300, 32, 4, 50, 32
        hidden = {"equal": ((32, 32), (32, 32)), "big decoder": ((16, 16), (64, 64))}
        args.early, args.late_start, args.late_len, args.warmup = 2, 8, 3, 2
    else:
        n, dim, latent, batch, support = 5000, 784, 8, 100, 256
        hidden = {"equal": ((512, 512), (512, 512)), "big decoder": ((256, 256), (1024, 1024))}
        args.early, args.late_start, args.late_len, args.warmup = 10, 200, 11, 5
    args.batch = batch
    name = "big_networks_quick.json" if args.quick else "big_networks.json"
    if args.unmasked or len(args.objectives) != len(OBJECTIVES):
        name = name.replace(".json", "_subset.json" if not args.unmasked else "_unmasked.json")
    # The smoke run writes to the temporary directory: it does not replace committed results.
    output = args.output or (Path(tempfile.gettempdir()) if args.quick else Path(__file__).parent / "results") / name
    sigma = 0.1
    x = manifold_data(n, dim, latent, sigma)
    likelihood = NormalLikelihood(sigma)
    t0 = time.perf_counter()
    table = PosteriorTable.from_data(x, likelihood.kernel(), max_support=support, progress=False)
    table.log_suffix_mass()  # built once, outside the timed steps
    table_s = time.perf_counter() - t0
    regimes = [
        run_regime(x, likelihood, table, latent, *hidden[label], args, label) for label in args.regimes
    ]
    command = "python benchmarks/big_networks.py" + (" --quick" if args.quick else "") + \
        f" --repeats {args.repeats} --threads {args.threads}" + (" --unmasked" if args.unmasked else "") + \
        ("" if len(args.regimes) == 2 else " --regimes " + " ".join(repr(r) for r in args.regimes)) + \
        ("" if len(base_objectives) == len(OBJECTIVES) else " --objectives " + " ".join(repr(o) for o in base_objectives))
    meta = {
        "command": command,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads".replace("  ", " "),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "flush_denormal": "off (the default; the ELBOs do not change it)",
        "setting": f"N={n} points of a {latent}-D manifold in D={dim} (fixed random tanh MLP + noise {sigma}), "
        f"d={latent}, batch {batch}, Adam 1e-3, NormalLikelihood({sigma}); MAPA table GaussianKernel({sigma}) "
        f"with max_support={support}; block time = median over its steps, ratios within repeats",
        "table_build_s": round(table_s, 2),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"meta": meta, "regimes": regimes, "provenance": prov}, indent=2) + "\n")
    for reg in regimes:
        print(f"\n{reg['label']}: encoder {reg['encoder_hidden']}, decoder {reg['decoder_hidden']}")
        print(markdown(reg))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
