"""What made a results file, and does the current code still make it (``pyro-mapa reproduce --check``).

Every results JSON written by ``pyro-mapa reproduce`` and by the scripts under
``experiments/`` and ``benchmarks/`` carries a ``"provenance"`` entry made by
:func:`provenance`: the package version and git commit (with whether the code was dirty
and a hash of the uncommitted changes; docs and results under :data:`RESULT_PATHS` do not
count), the library versions, the Python version, the
machine (CPU model and the SIMD level torch dispatches to), the thread settings, the
number of worker processes, the full settings, the date (UTC) and the command line.

:func:`numeric_leaves` and :func:`max_abs_differences` compare the numbers of two
results, skipping wall-clock timings (:data:`VOLATILE_KEYS`), which no rerun reproduces;
:func:`~pyro_mapa_experiments.check.check_reproduction` reruns a random sample of a recorded reproduction's jobs with
their recorded seeds and settings and compares (tolerance :data:`CHECK_TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyro_mapa

__all__ = [
    "CHECK_TOLERANCE",
    "PROVENANCE_SCHEMA",
    "RESULT_PATHS",
    "VOLATILE_KEYS",
    "environment_differences",
    "git_state",
    "jsonable",
    "load_raw_results",
    "max_abs_differences",
    "numeric_leaves",
    "provenance",
    "same_code",
]

PROVENANCE_SCHEMA = "pyro_mapa.provenance/1"

#: ``--check`` tolerance on every compared number: half a unit in the last digit the docs
#: print test KLs and log-likelihoods with (3 decimals). A larger difference would change
#: a committed table, so the results are stale for the current code.
CHECK_TOLERANCE = 5e-4

#: Keys whose values are measurements of time or memory (or the provenance itself): they
#: differ on every run and are skipped when numbers are compared.
VOLATILE_KEYS = frozenset({
    "provenance",
    "seconds_per_epoch",
    "wall_clock_seconds",
    "train_seconds",
    "table_seconds",
    "peak_rss_mib_after_table",
    "ms_per_step",
    "vs_plain_mapa",
    "vs_plain_mapa_range",
    "vs_renyi",
    "vs_renyi_range",
})

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "OPENBLAS_NUM_THREADS")
_LIBRARIES = ("torch", "pyro-ppl", "numpy", "arviz", "zuko", "scipy", "scikit-learn", "matplotlib")


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses turned into dicts, tuples into lists and paths into strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


#: Paths (relative to the repository root) whose changes do not make the code "dirty": the docs
#: and the committed results that ``scripts/regenerate_all.sh`` rewrites.
RESULT_PATHS = ("docs", "benchmarks/results")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace")


def git_state(package_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The git commit of the source tree the package is imported from, and whether it is dirty.

    Returns ``{"commit": None, ...}`` when git is missing or the package is not imported
    from a git work tree (e.g. installed from a wheel); an enclosing repository that does
    not hold this package's sources is not mistaken for it.

    Only code counts: files under :data:`RESULT_PATHS` (the documentation and the committed
    results, which a regeneration pass rewrites step by step) are left out of the comparison, so
    the second step of a pass is not labelled dirty by the first step's output.

    Returns:
        ``commit`` (40 hex digits), ``dirty`` (tracked files outside :data:`RESULT_PATHS`
        differ from the commit, or untracked files exist inside the package or, by default, beside
        this module in ``pyro_mapa_experiments``),
        ``changes_sha256`` (SHA-256 of that ``git diff HEAD`` and of the untracked package
        files: two dirty trees with equal hashes hold the same code; ``None`` when clean)
        and ``untracked_package_files``.
    """
    pkg = Path(package_dir) if package_dir is not None else Path(pyro_mapa.__file__).resolve().parent
    empty = {"commit": None, "dirty": None, "changes_sha256": None, "untracked_package_files": None}
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if not top:
        return empty
    root = Path(top.strip()).resolve()
    if not (pkg / "__init__.py").exists() or root not in pkg.resolve().parents:
        return empty
    if not (_git(root, "ls-files", "--", str(pkg / "__init__.py")) or "").strip():
        return empty  # the enclosing repository does not track this package
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    diff = _git(root, "diff", "HEAD", "--binary", "--", ".", *(f":(exclude){p}" for p in RESULT_PATHS)) or ""
    code_dirs = [str(pkg)] + ([str(Path(__file__).resolve().parent)] if package_dir is None else [])
    listing = _git(root, "ls-files", "--others", "--exclude-standard", "--", *code_dirs) or ""
    untracked = sorted(line for line in listing.splitlines() if line.strip())
    dirty = bool(diff) or bool(untracked)
    digest = None
    if dirty:
        h = hashlib.sha256(diff.encode())
        for rel in untracked:
            h.update(rel.encode())
            try:
                h.update((root / rel).read_bytes())
            except OSError:
                pass
        digest = h.hexdigest()
    return {"commit": commit, "dirty": dirty, "changes_sha256": digest,
            "untracked_package_files": len(untracked)}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str | None:
    import torch

    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else None


def provenance(
    settings: Any = None,
    *,
    jobs: int | None = None,
    threads_per_job: int | None = None,
    command: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """A JSON-ready record of the code, libraries, machine and settings that produce a result.

    Arguments:
        settings: The run's full settings (a dataclass or a mapping; stored as JSON).
        jobs: Worker processes of the run (``--jobs``).
        threads_per_job: Torch threads each worker uses (``None``: the current process's).
        command: The command line (default ``sys.argv``).

    Returns:
        A dict with keys ``schema``, ``package``, ``git``, ``libraries``, ``python``,
        ``machine``, ``threads``, ``jobs``, ``settings``, ``date_utc`` and ``command``.
    """
    import torch

    if command is None:
        command = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    cpu = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return {
        "schema": PROVENANCE_SCHEMA,
        "package": {"name": "pyro-mapa", "version": _version("pyro-mapa")
                    or getattr(sys.modules.get("pyro_mapa"), "__version__", None)},
        "git": git_state(),
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_capability": cpu() if cpu is not None else None,
            "blas": _blas(),
            "cpu_count": os.cpu_count(),
        },
        "threads": {
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "threads_per_job": threads_per_job if threads_per_job is not None else torch.get_num_threads(),
            "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        },
        "jobs": jobs,
        "settings": jsonable(settings) if settings is not None else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def same_code(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two provenance records were made by the same code (commit and uncommitted changes).

    ``False`` when either lacks a commit (unknown code is never assumed equal).
    """
    ga, gb = (a or {}).get("git") or {}, (b or {}).get("git") or {}
    if not ga.get("commit") or ga.get("commit") != gb.get("commit"):
        return False
    return ga.get("changes_sha256") == gb.get("changes_sha256")


def environment_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """What, besides the code, differs between two provenance records and can change numbers.

    Library versions, Python, the CPU model, SIMD level and BLAS, and the threads per job.
    A record without provenance differs in everything (``["no provenance"]``).
    """
    if not a or not b:
        return ["no provenance"]
    out = []
    for lib in sorted(set(a.get("libraries", {})) | set(b.get("libraries", {}))):
        va, vb = a.get("libraries", {}).get(lib), b.get("libraries", {}).get(lib)
        if va != vb:
            out.append(f"{lib} {va} -> {vb}")
    pairs = [("python", a.get("python"), b.get("python"))]
    for key in ("cpu", "cpu_capability", "blas"):
        pairs.append((key, a.get("machine", {}).get(key), b.get("machine", {}).get(key)))
    pairs.append(("threads_per_job", a.get("threads", {}).get("threads_per_job"),
                  b.get("threads", {}).get("threads_per_job")))
    out += [f"{name} {va} -> {vb}" for name, va, vb in pairs if va != vb]
    return out


def numeric_leaves(obj: Any, prefix: str = "") -> dict[str, list[float]]:
    """Every number in a JSON value, by path (list positions written ``[]``), skipping volatile keys.

    >>> numeric_leaves({"a": 1, "b": [{"c": 2.0}, {"c": 3.0}], "seconds_per_epoch": 9})
    {'a': [1.0], 'b[].c': [2.0, 3.0]}
    """
    out: dict[str, list[float]] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k in VOLATILE_KEYS:
                continue
            for name, vals in numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)).items():
                out.setdefault(name, []).extend(vals)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            for name, vals in numeric_leaves(v, f"{prefix}[]").items():
                out.setdefault(name, []).extend(vals)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = [float(obj)]
    return out


def _diff(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    return abs(a - b)


def max_abs_differences(recorded: Any, current: Any) -> dict[str, float]:
    """Largest ``|recorded - current|`` per metric path (``inf``: a number missing or NaN on one side).

    Metrics only the current result has (new fields) are left out: the recorded run
    cannot be compared on them.
    """
    a, b = numeric_leaves(recorded), numeric_leaves(current)
    out = {}
    for name, va in a.items():
        vb = b.get(name)
        if vb is None or len(vb) != len(va):
            out[name] = math.inf
        else:
            out[name] = max((_diff(x, y) for x, y in zip(va, vb, strict=True)), default=0.0)
    return out


def load_raw_results(
    directory: str | Path,
) -> tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]:
    """``(provenance, settings, results)`` of a run's ``raw_results.json``.

    Also reads the format before provenance (a bare list, settings in ``paper_reproduction.json``);
    its provenance is ``None``.
    """
    directory = Path(directory)
    path = directory / "raw_results.json"
    if not path.exists():
        raise ValueError(f"check: {path} does not exist; pass the --output directory of a reproduce run")
    raw = json.loads(path.read_text())
    if isinstance(raw, dict):
        return raw.get("provenance"), raw["settings"], raw["results"]
    summary_path = directory / "paper_reproduction.json"
    if not summary_path.exists():
        raise ValueError(f"check: {path} has no settings and {summary_path} is missing")
    summary = json.loads(summary_path.read_text())
    return summary.get("provenance"), summary["settings"], raw
