"""Command line: ``pyro-mapa demo`` and ``pyro-mapa reproduce`` (or ``python -m pyro_mapa ...``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import pyro
import torch

__all__ = ["main", "run_demo"]

QUICK_HELP = (
    "circle only: 1,000 training points, 100 epochs (1,000 gradient steps) per method, one draw, one "
    "restart, plus a 4-point cost sweep. Every method learns the curve (test KL far below a Gaussian "
    "fit's; MAPA-naive least), but these are one draw's numbers, not the paper's table; the JSON and the "
    "figures say 'quick'. Takes about a minute of CPU time on a 2-core VM (more when the machine is busy)"
)


def _experiments(module: str):
    """``pyro_mapa_experiments.<module>``: the reproduction lives in the repository, not in the installed library."""
    import importlib

    try:
        return importlib.import_module(f"pyro_mapa_experiments.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("pyro_mapa_experiments", f"pyro_mapa_experiments.{module}"):
            raise
        raise SystemExit(
            "pyro-mapa: the paper's experiments are not part of the installed library; from a clone of the "
            "repository run: pip install -e ./experiments"
        ) from None


def run_demo(
    epochs: int = 200,
    num_train: int = 1000,
    num_test: int = 2000,
    seed: int = 0,
    num_top: int = 5,
    num_samples: int = 5,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Trains MAPA and a VAE on figure-8 and returns their losses and test log-likelihoods.

    Both use the same decoder architecture; MAPA's prior is recovered by a Gaussian
    copula, and both test log-likelihoods are exact (quadrature over the 1-D latent).
    Training and evaluation run under the thread policy of :mod:`pyro_mapa.training.threads`
    (``num_threads``; default one thread unless ``OMP_NUM_THREADS`` is set).
    """
    from .training.threads import torch_threads

    with torch_threads(num_threads):
        return _run_demo(epochs, num_train, num_test, seed, num_top, num_samples, progress)


def _run_demo(epochs, num_train, num_test, seed, num_top, num_samples, progress) -> dict[str, dict[str, float]]:
    from .datasets import load_dataset
    from .methods import build_method
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
            num_threads=torch.get_num_threads(),  # the demo's policy, applied around the whole demo
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
    res = run_demo(args.epochs, args.num_train, args.num_test, args.seed, args.num_top, args.num_samples,
                   num_threads=args.threads)
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


def _print_reproduction(summary: dict, st, elapsed: float, output: str, quick: bool) -> None:
    ref = summary.get("reference", {})
    print(f"{'data set':<16}" + "".join(f"{m:>12}" for m in st.methods) + f"{'Gaussian fit':>14}")
    not_learned = []
    for name, entry in summary["datasets"].items():
        gauss = ref.get(name, {}).get("gaussian_fit_test_kl_mean", float("nan"))
        kls = {m: entry[m]["test_kl_mean"] for m in st.methods if m in entry}
        cells = "".join(f"{kls[m]:>12.3f}" if m in kls else f"{'':>12}" for m in st.methods)
        print(f"{name:<16}{cells}{gauss:>14.3f}")
        not_learned += [f"{m} on {name}" for m, kl in kls.items() if not kl < gauss]
    print(f"test KL in nats (mean over {st.draws} draw(s); exact, by quadrature). 'Gaussian fit': a "
          "full-covariance Gaussian fitted to the training points, the bar for having learned anything")
    if not_learned:
        print(f"NOT LEARNED: {', '.join(not_learned)} did no better than the Gaussian fit: "
              "those numbers show nothing")
    if quick:
        steps = st.epochs * -(-st.num_train // st.batch_size)
        print(f"QUICK RUN: {st.num_train} training points, {steps} gradient steps per method, "
              f"{st.draws} draw, {st.restarts} restart: a look at training, not the paper's numbers "
              "(run without --quick for those)")
    print(f"wrote {output}/paper_reproduction.json, raw_results.json and figures in {elapsed:.0f} s")


def _check(args: argparse.Namespace) -> int:
    import json
    import math
    from pathlib import Path

    check_reproduction = _experiments("check").check_reproduction

    try:
        report = check_reproduction(args.check, sample=args.sample, seed=args.seed, tolerance=args.tolerance,
                                    jobs=args.jobs, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"re-ran {report['sample']} of {report['of']} jobs of {report['directory']} "
          f"(sample seed {report['seed']}):")
    for job in report["jobs"]:
        print(f"  {job['job']}: largest difference {job['max_abs_difference']:.3g}")
    print(f"{'metric':<40}{'max |recorded - rerun|':>24}  job")
    for name, m in sorted(report["metrics"].items()):
        d = m["max_abs_difference"]
        print(f"{name:<40}{('missing' if math.isinf(d) else f'{d:.3g}'):>24}  {m['job']}")
    rec, cur = report["recorded"], report["current"]
    print(f"recorded commit {rec['commit']} (dirty: {rec['dirty']}); current {cur['commit']} "
          f"(dirty: {cur['dirty']}); same code: {report['same_code']}")
    for diff in report["environment_differences"]:
        print(f"  environment: {diff}")
    verdict = "PASS" if report["passed"] else "FAIL"
    print(f"{verdict} (tolerance {report['tolerance']:g}): {report['verdict']}")
    out = Path(args.check_output) if args.check_output else Path(args.check) / "check.json"
    out.write_text(json.dumps(report, indent=2, default=str).replace("Infinity", '"inf"') + "\n")
    print(f"wrote {out}")
    return 0 if report["passed"] else 1


def _method_options(text: str | None) -> dict:
    import json

    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        example = '{"VAE": {"hidden": [100, 100]}}'
        raise SystemExit(f"--method-options must be JSON such as '{example}': {e}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise SystemExit("--method-options must map method names to objects of build_method arguments")
    return options


def _reproduce(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    import shlex
    from pathlib import Path

    from .datasets import DATASET_NAMES
    from .methods import METHODS

    reproduce = _experiments("reproduce")
    ReproductionSettings, run_reproduction = reproduce.ReproductionSettings, reproduce.run_reproduction

    if args.check:
        return _check(args)
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    for name in args.datasets or ():
        if name not in DATASET_NAMES:
            raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATASET_NAMES)}")
    for name in methods or ():
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; choose from {', '.join(METHODS)} (or 'all')")
    overrides: dict = {"jobs": args.jobs, "method_options": _method_options(args.method_options)}
    if args.datasets:
        overrides["datasets"] = tuple(args.datasets)
    if methods:
        overrides["methods"] = tuple(methods)
    for key in ("seeds", "restarts", "epochs"):
        value = getattr(args, key)
        if value is not None:
            overrides["draws" if key == "seeds" else key] = value
    st = ReproductionSettings.quick(**overrides) if args.quick else ReproductionSettings(**overrides)
    command = f"pyro-mapa {shlex.join(argv)}" if argv is not None else None
    start = time.perf_counter()
    summary = run_reproduction(st, Path(args.output), progress=not args.no_progress, command=command)
    _print_reproduction(summary, st, time.perf_counter() - start, args.output, args.quick)
    return 0


def _add_reproduce(sub) -> None:
    rep = sub.add_parser(
        "reproduce", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="run the paper's experiments, write results and figures (or --check recorded ones)",
        description="Runs the paper's experiments (docs/results.md) and writes paper_reproduction.json, "
        "raw_results.json (every job with its seeds; both with the provenance: commit, libraries, threads) "
        "and figures. For given settings, machine and --jobs, two runs write identical numbers "
        "(timings aside).",
    )
    add = rep.add_argument
    add("--quick", action="store_true", help=QUICK_HELP)
    add("--datasets", nargs="+", default=None,
        help="default: figure8 circle absolute_value clusters spiral_dots (circle with --quick)")
    add("--methods", nargs="+", default=None,
        help="default: VAE IWAE MAPA MAPA-GT MAPA-naive; 'all' for every registered method")
    add("--method-options", default=None,
        help="JSON of build_method arguments per method, overriding the defaults, "
        "e.g. '{\"VAE\": {\"hidden\": [100, 100]}}'")
    add("--seeds", type=int, default=None, help="number of data draws (default 3; 1 with --quick)")
    add("--restarts", type=int, default=None, help="random restarts per method (default 3; 1 with --quick)")
    add("--epochs", type=int, default=None, help="epochs per restart (default 200; 100 with --quick)")
    add("--jobs", type=int, default=2,
        help="worker processes, one torch thread each (the numbers do not depend on it)")
    add("--output", default="results", help="output directory")
    add("--no-progress", action="store_true")
    chk = rep.add_argument_group("checking recorded results").add_argument
    chk("--check", metavar="DIR", default=None,
        help="rerun a random sample of the jobs in DIR/raw_results.json with their recorded seeds and "
        "settings; print the largest difference per metric and write DIR/check.json; exit 1 if the code "
        "differs from the recorded commit and a number differs by more than --tolerance")
    chk("--sample", type=int, default=3, help="jobs to rerun (default 3)")
    chk("--seed", type=int, default=0, help="seed of the random sample of jobs (default 0)")
    chk("--tolerance", type=float, default=5e-4,
        help="largest allowed absolute difference (default 5e-4: half a unit in the 3rd decimal the docs "
        "print; the same commit on the same machine gives exactly 0)")
    chk("--check-output", default=None, help="where to write the JSON report (default DIR/check.json)")
    rep.set_defaults(func=_reproduce)


def _libi(args: argparse.Namespace) -> int:
    lb = _experiments("libi_benchmarks")
    LiBIBenchmarkSettings, run_libi_benchmarks, write_summary = (lb.LiBIBenchmarkSettings, lb.run_libi_benchmarks,
                                                                 lb.write_summary)

    if args.summarize:
        summary = write_summary(args.output)
        print(f"wrote {args.output}/libi_benchmarks.json from raw_results.json ({len(summary['rows'])} rows)")
        return 0

    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in
                 (("datasets", args.datasets), ("methods", args.methods), ("settings", args.settings),
                  ("restarts", args.restarts), ("epochs", args.epochs), ("jobs", args.jobs)) if v is not None}
    st = LiBIBenchmarkSettings.quick(**overrides) if args.quick else LiBIBenchmarkSettings(**overrides)
    summary = run_libi_benchmarks(st, args.output, progress=not args.no_progress, merge=args.merge)
    print(f"{'data set':<12}{'networks':<9}{'method':<18}{'test LL':>9}{'test KL':>9}{'paper IS':>10}{'MMD2':>8}"
          f"{'passes':>8}")
    for r in summary["rows"]:
        if "failed" in r:
            print(f"{r['dataset']:<12}{r['setting']:<9}{r['method']:<18} failed: {r['failed'][:60]}")
            continue
        paper = f"{r['paper_is_ll']:>10.3f}" if "paper_is_ll" in r else f"{'-':>10}"
        print(f"{r['dataset']:<12}{r['setting']:<9}{r['method']:<18}{r['test_ll']:>9.3f}{r['test_kl']:>9.3f}{paper}"
              f"{r['mmd2']:>8.4f}{r['passes_per_point']:>8.2f}")
    print(f"wrote {args.output}/libi_benchmarks.json and raw_results.json "
          f"({(summary['wall_clock_seconds'] or 0) / 60:.1f} min)")
    return 0


def _add_libi(sub) -> None:
    lib = sub.add_parser(
        "libi-benchmarks", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="LiBI's four benchmarks: LiBI, its baselines, IWAE and MAPA, exact test log-likelihoods",
        description="Trains VAE, beta-VAE, annealed beta-VAE, Lagging, LiBI, ExactDecoder, IWAE, MAPA and "
        "MAPA-free on linear_jtex, cubic_jtex, gaussian_4d and mobius with the paper's networks and with MLPs, "
        "chooses hyperparameters and restarts on the exact validation log-likelihood and writes "
        "libi_benchmarks.json and raw_results.json (replayable by 'pyro-mapa reproduce --check DIR').",
    )
    add = lib.add_argument
    add("--quick", action="store_true", help="linear_jtex, the paper's networks, one restart, 60 epochs (a smoke run)")
    add("--datasets", nargs="+", default=None, help="default: all four")
    add("--methods", nargs="+", default=None, help="default: all nine")
    add("--settings", nargs="+", default=None, help="network settings: paper, mlp (default both)")
    add("--restarts", type=int, default=None, help="restarts per setting with the paper's networks (default 2)")
    add("--epochs", type=int, default=None, help="epochs per job (default 300)")
    add("--jobs", type=int, default=None, help="worker processes, one torch thread each (default 1)")
    add("--output", default="results/libi_benchmarks", help="output directory")
    add("--summarize", action="store_true",
        help="train nothing: rewrite OUTPUT/libi_benchmarks.json (selection on validation) from OUTPUT/raw_results.json")
    add("--merge", action="store_true",
        help="rerun only the given methods/data sets into an existing OUTPUT, replacing their records")
    add("--no-progress", action="store_true")
    lib.set_defaults(func=_libi)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-mapa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="train MAPA and a VAE on figure-8 and compare test log-likelihoods")
    demo.add_argument("--epochs", type=int, default=200)
    demo.add_argument("--num-train", type=int, default=1000)
    demo.add_argument("--num-test", type=int, default=2000)
    demo.add_argument("--num-top", type=int, default=5, help="K of the MAPA bound")
    demo.add_argument("--num-samples", type=int, default=5, help="S of the MAPA bound")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: 1, or PyTorch's setting when OMP_NUM_THREADS is set; small "
        "networks run fastest on one thread, above all on a busy machine)",
    )
    demo.set_defaults(func=_demo)
    _add_reproduce(sub)
    _add_libi(sub)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    if args.func is _reproduce:
        return _reproduce(args, argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
