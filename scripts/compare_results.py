"""Compare the numbers of two results JSON files (timings and provenance skipped).

Each argument is a path, or ``REV:PATH`` for a file as committed at a git revision, so a
regenerated file can be compared with the one it replaced:

    python scripts/compare_results.py b78f334:docs/results/reproduction_current/raw_results.json \\
        docs/results/raw_results.json

Prints the largest ``|old - new|`` per metric path (``pyro_mapa_experiments.provenance.
max_abs_differences``: wall-clock fields and provenance are skipped; metrics only the new file has
are listed as new) and exits 1 when one exceeds ``--tolerance`` (default 0: identical numbers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_mapa_experiments.provenance import max_abs_differences, numeric_leaves

__all__ = ["load", "main"]

ROOT = Path(__file__).resolve().parents[1]


def load(spec: str) -> Any:
    """The JSON at a path, or at ``REV:PATH`` in the repository's history."""
    if not Path(spec).exists() and ":" in spec:
        rev, path = spec.split(":", 1)
        try:
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"cannot read {spec!r} from git: {getattr(e, 'stderr', e)}") from None
        return json.loads(text)
    return json.loads(Path(spec).read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="PATH or REV:PATH")
    parser.add_argument("new", help="PATH or REV:PATH")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest allowed difference (default 0)")
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        raise SystemExit(f"--tolerance must be >= 0, got {args.tolerance}")
    old, new = load(args.old), load(args.new)
    diffs = max_abs_differences(old, new)
    if not diffs:
        raise SystemExit(f"{args.old} has no numbers to compare")
    added = sorted(set(numeric_leaves(new)) - set(numeric_leaves(old)))
    worst = max(diffs.values())
    for name, d in sorted(diffs.items()):
        if d > 0:
            print(f"{name:<50}{d:>12.3g}")
    print(f"{len(diffs)} metrics compared, {sum(d > 0 for d in diffs.values())} differ; largest difference "
          f"{worst:.3g}" + (f"; only in the new file: {', '.join(added)}" if added else ""))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
