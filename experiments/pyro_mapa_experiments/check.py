"""``pyro-mapa reproduce --check``: rerun a sample of a recorded reproduction's jobs and compare.

It sits above both :mod:`.provenance` (what made a results file) and :mod:`.reproduce` (how a job
runs), so neither imports the other back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

from .provenance import (
    CHECK_TOLERANCE,
    environment_differences,
    jsonable,
    load_raw_results,
    max_abs_differences,
    provenance,
    same_code,
)
from . import libi_benchmarks
from .reproduce import ReproductionSettings, _run_all

__all__ = ["check_reproduction"]


def _job_from_record(rec: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The job that produced ``rec``, with its recorded seeds (legacy records: ``1000 * draw + restart``)."""
    spec = dict(rec.get("job") or {})
    if not spec:  # records written before job specs were stored
        spec = {kk: rec[kk] for kk in ("dataset", "draw", "method", "label", "kind")}
        if rec["method"].startswith("MAPA") and rec["label"] != rec["method"]:
            spec.update(num_top=rec["num_top"], num_samples=rec["num_samples"])
        elif rec["method"] == "IWAE" and rec["label"] != "IWAE":
            spec["particles"] = rec["num_samples"]
    base = {**settings, **spec.get("settings_overrides", {})}
    if spec.get("kind") == "sweep" and "settings_overrides" not in spec:
        base["restarts"] = 1  # the legacy sweep: one restart
    seeds = [r.get("seed", 1000 * rec["draw"] + r["restart"]) for r in rec["restarts"]]
    return {**spec, "settings": jsonable(ReproductionSettings.from_json(base)), "seeds": seeds, "grid": False}


_IDENTITY = frozenset({"draw", "num_top", "num_samples", "restarts[].restart", "restarts[].seed"})


def _git_summary(prov: Mapping[str, Any] | None) -> dict[str, Any]:
    git = (prov or {}).get("git") or {}
    return {"commit": git.get("commit"), "dirty": git.get("dirty")}


def check_reproduction(
    directory: str | Path,
    sample: int = 3,
    seed: int = 0,
    tolerance: float = CHECK_TOLERANCE,
    jobs: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Reruns ``sample`` random jobs of a recorded run with their recorded seeds and settings.

    Returns a report: the largest ``|recorded - rerun|`` per metric (timings skipped), and
    ``passed``. It fails when the code differs from the recorded commit (or the tree's
    uncommitted changes differ) and a difference exceeds ``tolerance``; and when code and
    environment (libraries, CPU, threads) are the same but the numbers are not, since then
    determinism is broken. Same code on another machine or library version only warns:
    floating-point differences grow through training.
    """
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    recorded, settings, records = load_raw_results(directory)
    picked = sorted(random.Random(seed).sample(range(len(records)), min(sample, len(records))))
    libi = settings.get("experiment") == "libi_benchmarks"
    if libi:  # LiBI's benchmarks: each record holds its full job spec and seed
        todo = [dict(records[i]["job"]) for i in picked]
        rerun = libi_benchmarks._run_all(todo, jobs, progress)
    else:
        todo = [_job_from_record(records[i], settings) for i in picked]
        rerun = _run_all(todo, jobs, progress)
    metrics: dict[str, dict[str, Any]] = {}
    per_job = []
    for i, job, new in zip(picked, todo, rerun, strict=True):
        diffs = max_abs_differences(records[i], new)
        name = (f"{job['dataset']} {job['setting']} {job['method']} {job['options']} restart {job['restart']}" if libi
                else f"{job['dataset']} draw {job['draw']} {job['label']} ({job['kind']})")
        per_job.append({"index": i, "job": name, "max_abs_difference": max(diffs.values(), default=0.0)})
        for metric, d in diffs.items():
            if d == 0 and (metric in _IDENTITY or metric.startswith("job.")):
                continue  # the job's identity, equal by construction: not a result
            if metric not in metrics or d > metrics[metric]["max_abs_difference"]:
                metrics[metric] = {"max_abs_difference": d, "job": name}
    threads = 1 if libi else ReproductionSettings.from_json(settings).threads_per_job
    current = provenance(jobs=jobs, threads_per_job=threads)
    code_same, env = same_code(recorded, current), environment_differences(recorded, current)
    worst_metric = max(metrics, key=lambda k: metrics[k]["max_abs_difference"], default="")
    worst = metrics[worst_metric]["max_abs_difference"] if worst_metric else 0.0
    where = f" ({worst_metric}, {metrics[worst_metric]['job']})" if worst_metric else ""
    if worst <= tolerance:
        passed, verdict = True, "agree" + (" (exactly)" if worst == 0 else f" within {tolerance:g}")
    elif not code_same:
        passed, verdict = False, (f"code differs from the recorded run and numbers differ by up to "
                                  f"{worst:.3g}{where} > {tolerance:g}: the results are stale, regenerate")
    elif env:
        passed, verdict = True, (f"same code, different environment ({'; '.join(env)}): numbers differ by "
                                 f"up to {worst:.3g}{where}, from floating point, not from the code")
    else:
        passed, verdict = False, (f"same code and environment but numbers differ by {worst:.3g}{where}: "
                                  "determinism is broken")
    return {
        "directory": str(directory), "sample": len(picked), "of": len(records), "seed": seed,
        "tolerance": tolerance, "recorded": _git_summary(recorded), "current": _git_summary(current),
        "same_code": code_same,
        "environment_differences": env, "metrics": metrics, "jobs": per_job, "largest_difference": worst,
        "passed": passed, "verdict": verdict,
    }
