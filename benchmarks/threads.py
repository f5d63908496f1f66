"""Times the demo's training (MAPA and a VAE on figure-8) with 1 and 2 torch threads, quiet and under load.

The load is a second process spinning a torch matmul loop on ``--busy-threads`` threads (the
situation this benchmark is about: a 2-core machine shared with other work). Each configuration runs
``pyro_mapa.cli.run_demo`` in this process with ``num_threads`` set (the thread policy of
``pyro_mapa.training.threads``), and records its wall time, the per-method seconds per epoch and
the printed numbers (which must not depend on the thread count). Writes JSON::

    python benchmarks/threads.py                       # 50 epochs per method, JSON to benchmarks/results/threads.json
    python benchmarks/threads.py --epochs 200          # the full demo (slow under load with 2 threads)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from pyro_mapa.cli import run_demo

SPIN = (
    "import torch, sys\n"
    "torch.set_num_threads(int(sys.argv[1]))\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dirty(paths: tuple[str, ...] = ("pyro_mapa", "benchmarks/threads.py")) -> bool | None:
    """Whether the code this benchmark runs differs from the commit (``None`` if git is unavailable)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.stdout.strip())


def _run(threads: int, epochs: int) -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    res = run_demo(epochs=epochs, progress=False, num_threads=threads)
    wall = time.perf_counter() - start
    return {
        "threads": threads,
        "wall_s": wall,
        "load_avg_1min_before": load_before,
        "seconds_per_epoch": {m: res[m]["seconds_per_epoch"] for m in ("MAPA", "VAE")},
        "final_loss_per_point": {m: res[m]["final_loss_per_point"] for m in ("MAPA", "VAE")},
        "test_ll": {m: res[m]["test_ll"] for m in ("MAPA", "VAE")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="epochs per method (the demo runs 200)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--busy-threads", type=int, default=2, help="threads of the busy process")
    parser.add_argument("--out", default="benchmarks/results/threads.json")
    args = parser.parse_args(argv)
    runs = []
    for load in ("quiet", "busy"):
        spinner = None
        if load == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(args.busy_threads)])
            time.sleep(2.0)  # let it start spinning
        try:
            for threads in args.threads:  # one warm-up-free run each: the first run also pays imports
                rec = {"load": load, **_run(threads, args.epochs)}
                runs.append(rec)
                print(f"{load:5s} threads={threads}: {rec['wall_s']:.1f} s "
                      f"(MAPA {rec['seconds_per_epoch']['MAPA']:.3f} s/epoch, VAE {rec['seconds_per_epoch']['VAE']:.3f})",
                      flush=True)
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.wait()
    same = all(r["final_loss_per_point"] == runs[0]["final_loss_per_point"] and r["test_ll"] == runs[0]["test_ll"]
               for r in runs)
    out = {
        "command": "python benchmarks/threads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": _git_commit(),
        "dirty": _dirty(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "epochs": args.epochs,
        "busy_process": f"a second python process looping tanh(a @ a) on 512x512 float32, {args.busy_threads} threads",
        "same_numbers_for_every_run": same,
        "runs": runs,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"numbers identical across runs: {same}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
