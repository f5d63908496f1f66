"""Command line: ``pyro-mapa demo`` and ``pyro-mapa reproduce`` (or ``python -m pyro_mapa ...``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import pyro
import torch

__all__ = ["main", "run_demo"]


def run_demo(
    epochs: int = 200,
    num_train: int = 1000,
    num_test: int = 2000,
    seed: int = 0,
    num_top: int = 5,
    num_samples: int = 5,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Trains MAPA and a VAE on figure-8 and returns their losses and test log-likelihoods.

    Both use the same decoder architecture; MAPA's prior is recovered by a Gaussian
    copula, and both test log-likelihoods are exact (quadrature over the 1-D latent).
    """
    from .experiments.datasets import load_dataset
    from .experiments.methods import build_method
    from .training import fit

    ds = load_dataset("figure8", num_train=num_train, num_valid=10, num_test=num_test, seed=seed)
    true_ll = float(ds.true_log_prob(ds.test).mean())
    results: dict[str, dict[str, float]] = {}
    for name in ("MAPA", "VAE"):
        pyro.clear_param_store()
        setup = build_method(
            name, ds.train, ds.likelihood, num_top=num_top, num_samples=num_samples, seed=seed
        )
        fitted = fit(
            setup.model,
            setup.guide,
            setup.loss,
            len(ds.train),
            epochs=epochs,
            seed=seed,
            progress=progress,
            desc=name,
        )
        test_ll = float(setup.learned_model().log_prob(ds.test).mean())
        results[name] = {
            "final_loss_per_point": fitted.epoch_losses[-1],
            "test_ll": test_ll,
            "test_kl": true_ll - test_ll,
            "passes_per_point_per_step": fitted.passes_per_point,
            "seconds_per_epoch": fitted.seconds_per_epoch,
        }
    results["truth"] = {"test_ll": true_ll}
    return results


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print(
        f"figure-8: {args.num_train} training points, {args.epochs} epochs, batch 100, Adam 1e-3; "
        f"MAPA with K={args.num_top}, S={args.num_samples}; VAE with Trace_ELBO"
    )
    res = run_demo(args.epochs, args.num_train, args.num_test, args.seed, args.num_top, args.num_samples)
    print(f"{'method':<8}{'loss/pt':>10}{'test LL':>10}{'test KL':>10}{'passes/pt':>11}{'s/epoch':>9}")
    for name in ("MAPA", "VAE"):
        r = res[name]
        print(
            f"{name:<8}{r['final_loss_per_point']:>10.3f}{r['test_ll']:>10.3f}{r['test_kl']:>10.3f}"
            f"{r['passes_per_point_per_step']:>11.2f}{r['seconds_per_epoch']:>9.3f}"
        )
    print(f"{'truth':<8}{'':>10}{res['truth']['test_ll']:>10.3f}")
    print(
        "loss/pt: minus the training bound per point at the last epoch; "
        "test LL/KL: exact, by quadrature; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .experiments.datasets import DATASET_NAMES
    from .experiments.methods import METHODS
    from .experiments.reproduce import ReproductionSettings, run_reproduction

    for name in args.datasets:
        if name not in DATASET_NAMES:
            raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATASET_NAMES)}")
    for name in args.methods:
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    overrides = {"datasets": tuple(args.datasets), "methods": tuple(args.methods), "jobs": args.jobs}
    for key in ("seeds", "restarts", "epochs"):
        value = getattr(args, key)
        if value is not None:
            overrides["draws" if key == "seeds" else key] = value
    st = ReproductionSettings.quick(**overrides) if args.quick else ReproductionSettings(**overrides)
    start = time.perf_counter()
    summary = run_reproduction(st, Path(args.output), progress=not args.no_progress)
    print(f"{'data set':<16}" + "".join(f"{m:>12}" for m in st.methods))
    for name, entry in summary["datasets"].items():
        print(f"{name:<16}" + "".join(f"{entry[m]['test_kl_mean']:>12.3f}" for m in st.methods if m in entry))
    print(f"test KL (mean over {st.draws} draw(s)); wrote {args.output}/paper_reproduction.json and figures "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-mapa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train MAPA and a VAE on figure-8 and compare test log-likelihoods")
    demo.add_argument("--epochs", type=int, default=200)
    demo.add_argument("--num-train", type=int, default=1000)
    demo.add_argument("--num-test", type=int, default=2000)
    demo.add_argument("--num-top", type=int, default=5, help="K of the MAPA bound")
    demo.add_argument("--num-samples", type=int, default=5, help="S of the MAPA bound")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    rep = sub.add_parser("reproduce", help="run the paper's experiments and write results and figures")
    rep.add_argument("--quick", action="store_true", help="small data and few epochs: a few minutes on 2 cores")
    rep.add_argument("--datasets", nargs="+", default=["figure8", "circle", "absolute_value", "clusters", "spiral_dots"])
    rep.add_argument("--methods", nargs="+", default=["VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive"])
    rep.add_argument("--seeds", type=int, default=None, help="number of data draws (default 3; 1 with --quick)")
    rep.add_argument("--restarts", type=int, default=None, help="random restarts per method (default 3)")
    rep.add_argument("--epochs", type=int, default=None, help="epochs per restart (default 200)")
    rep.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    rep.add_argument("--output", default="results", help="output directory")
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(func=_reproduce)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
