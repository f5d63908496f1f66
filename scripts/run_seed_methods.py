"""Runs the seed methods (and Pyro's RenyiELBO) through the reproduction protocol, without the cost sweeps.

    python scripts/run_seed_methods.py --output docs/results/seed_methods [--draws 1] [--restarts 3] [--jobs 2]

Same data, networks, epochs, restart selection and exact evaluation as `pyro-mapa reproduce`; InfoVAE and
HVAE choose their setting from `OPTION_GRIDS` with the restart, on validation log-likelihood only.
"""

import argparse
from pathlib import Path

from pyro_mapa_experiments.reproduce import ReproductionSettings, run_reproduction

SEED_METHODS = ("RenyiELBO", "InfoVAE", "HVAE", "LIDVAE", "MAPA-LIDVAE", "LiBI")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/results/seed_methods"))
    parser.add_argument("--methods", nargs="+", default=list(SEED_METHODS))
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fixed-options", action="store_true",
                        help="use each method's DEFAULT_OPTIONS instead of choosing from OPTION_GRIDS")
    args = parser.parse_args()
    extra = {"datasets": tuple(args.datasets)} if args.datasets else {}
    if args.fixed_options:
        extra["method_options"] = {m: {"options": {}} for m in args.methods}
    st = ReproductionSettings(methods=tuple(args.methods), draws=args.draws, restarts=args.restarts,
                              epochs=args.epochs, jobs=args.jobs, extra_mapa=(), sweep_mapa=(), sweep_iwae=(),
                              **extra)
    run_reproduction(st, args.output)
