"""The paper's experiments (§6, App. C-D) end to end: train, select, evaluate, summarize, check.

For every data set, draw and method: ``restarts`` random restarts are trained with
:func:`~pyro_mapa.training.fit`; the restart with the best validation log-likelihood is
kept, and its exact test log-likelihood (quadrature over the 1-D latent, with the prior
recovered by a Gaussian copula for the MAPA variants) gives the test KL

.. math:: \\mathrm{KL} = \\frac{1}{|T|}\\sum_{x \\in T} \\log p_{true}(x) - \\log p_{learned}(x).

**Determinism.** A job (one data set × draw × method × (K, S)) is a pure function of its
spec: it runs on ``threads_per_job`` torch threads (1 by default; restored afterwards),
and every random stream in it (network initialization, minibatch order, MAPA's remainder
draws, evaluation samples) is seeded from :func:`job_seed` of ``(data set, draw, method,
restart)``. Jobs run in a process pool in any order, so the numbers do not depend on
``--jobs``; timings (:data:`~pyro_mapa_experiments.provenance.VOLATILE_KEYS`) do.

**Provenance.** Both JSON files carry :func:`~pyro_mapa_experiments.provenance.provenance`;
``raw_results.json`` also records each job's spec and seeds, so
:func:`~pyro_mapa_experiments.check.check_reproduction` can rerun a sample of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyro
import torch
from tqdm.auto import tqdm

from pyro_mapa.table.posterior_table import PosteriorTable
from .collapse_summary import collapse_summary
from pyro_mapa.datasets import DATASET_NAMES, load_dataset
from pyro_mapa.methods import METHODS, OPTION_GRIDS, build_method, true_posterior_table
from .provenance import git_state, jsonable, provenance

__all__ = ["PAPER_METHODS", "ReproductionSettings", "gaussian_reference", "job_seed", "run_job",
           "run_reproduction", "summarize"]

PAPER_METHODS = ("VAE", "IWAE", "MAPA", "MAPA-GT", "MAPA-naive")

@dataclass
class ReproductionSettings:
    """Everything that defines a reproduction run (stored in the output JSON).

    ``method_options`` maps a method name to keyword arguments of
    :func:`~pyro_mapa.methods.build_method` for that method (added to, or
    overriding, ``hidden``, ``num_top``, ``num_samples``, ``num_particles`` and ``table``).
    """

    datasets: Sequence[str] = DATASET_NAMES
    methods: Sequence[str] = PAPER_METHODS
    draws: int = 3
    restarts: int = 3
    epochs: int = 200
    batch_size: int = 100
    lr: float = 1e-3
    num_train: int = 1000
    num_valid: int = 1000
    num_test: int = 2000
    hidden: Sequence[int] = (50, 50)
    num_top: int = 5
    num_samples: int = 5
    iwae_particles: int = 10
    extra_mapa: Sequence[tuple[int, int]] = ((3, 3), (20, 20))
    sweep_mapa: Sequence[tuple[int, int]] = ((1, 0), (2, 2), (5, 5), (10, 10), (20, 20))
    sweep_iwae: Sequence[int] = (1, 2, 5, 10, 20)
    quadrature_points: int = 4001
    collapse_points: int = 500
    grid_size: int = 100
    jobs: int = 2
    threads_per_job: int = 1
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    is_quick: bool = False  # set by quick(): recorded in the JSON and shown on the figures

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        unknown = [d for d in self.datasets if d not in DATASET_NAMES]
        if unknown:
            raise ValueError(f"datasets: unknown {unknown}; choose from {', '.join(DATASET_NAMES)}")

    @classmethod
    def quick(cls, **overrides: Any) -> ReproductionSettings:
        """One data set (circle), 100 epochs (1,000 gradient steps), one draw, one restart.

        The full run's 1,000 training points and batch of 100, half its epochs, a third of
        its restarts, smaller validation and test sets (200, 500) and 1,001 quadrature nodes.
        Every method learns the curve (test KL well below a Gaussian fit's); the numbers are
        those of one draw and one restart, not the paper's table.
        """
        base: dict[str, Any] = dict(
            datasets=("circle",), draws=1, restarts=1, epochs=100, num_valid=200, num_test=500, extra_mapa=(),
            sweep_mapa=((1, 0), (5, 5)), sweep_iwae=(1, 10), quadrature_points=1001, grid_size=40, is_quick=True,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReproductionSettings:
        """Settings from a stored dict; keys that are not settings (timings, notes) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for k in ("extra_mapa", "sweep_mapa"):
            if k in kwargs:
                kwargs[k] = tuple(tuple(p) for p in kwargs[k])
        for k in ("datasets", "methods", "hidden", "sweep_iwae"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        return cls(**kwargs)


def job_seed(dataset: str, draw: int, method: str, restart: int) -> int:
    """The seed of one restart (``restart = -1``: the job's evaluation), a hash of its identity.

    Independent of the order jobs run in and of the worker that runs them; variants of
    one method (MAPA's (K, S)) share it, so they start from the same networks.
    """
    key = f"{dataset}/{draw}/{method}/{restart}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _label(method: str, k: int | None = None, s: int | None = None) -> str:
    if method.startswith("MAPA") and k is not None:
        return f"{method} K={k} S={s}"
    if method == "IWAE" and s is not None:
        return f"IWAE S={s}"
    return method


def _grid(x: torch.Tensor, size: int) -> tuple[torch.Tensor, list[float]]:
    lo, hi = x.min(0).values - 0.3, x.max(0).values + 0.3
    gx = torch.linspace(float(lo[0]), float(hi[0]), size)
    gy = torch.linspace(float(lo[1]), float(hi[1]), size)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    extent = [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])]
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), extent


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Trains one method on one draw with restarts; returns its evaluation (picklable).

    ``job["seeds"]`` (one per restart) overrides :func:`job_seed` (``--check`` replays
    recorded seeds this way).
    """
    st = ReproductionSettings.from_json(job["settings"])
    with _threads(st.threads_per_job):
        return _run_job(job, st)


def _run_job(job: dict[str, Any], st: ReproductionSettings) -> dict[str, Any]:
    name, draw, method = job["dataset"], job["draw"], job["method"]
    k, s = job.get("num_top", st.num_top), job.get("num_samples", st.num_samples)
    p = job.get("particles", st.iwae_particles)
    seeds = job.get("seeds") or [job_seed(name, draw, method, r) for r in range(st.restarts)]
    pyro.set_rng_seed(job_seed(name, draw, method, -1))
    ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=draw)
    table = None
    if method in ("MAPA", "MAPA-free", "MAPA-LIDVAE"):
        table = PosteriorTable.from_data(ds.train, ds.likelihood.kernel())
    elif method == "MAPA-GT":
        table = true_posterior_table(ds.train, ds.train_z, ds.decoder, ds.likelihood)
    elif method == "MAPA-naive":
        table = PosteriorTable.uniform(len(ds.train))
    best: dict[str, Any] | None = None
    restarts = []
    # Methods with an option grid (InfoVAE, HVAE) choose their setting with the restart, on validation
    # log-likelihood only; `method_options={"M": {"options": {...}}}` fixes the setting instead.
    method_kwargs = st.method_options.get(method, {})
    grid = [method_kwargs.get("options")] if "options" in method_kwargs else OPTION_GRIDS.get(method, [None])
    for config, opts in enumerate(grid):
        for r, seed in enumerate(seeds):
            pyro.clear_param_store()
            options = {"hidden": st.hidden, "num_top": k, "num_samples": s, "num_particles": p, "table": table,
                       **method_kwargs, "options": opts}
            setup = build_method(method, ds.train, ds.likelihood, seed=seed, **options)
            fitted = setup.train(len(ds.train), epochs=st.epochs, batch_size=st.batch_size, lr=st.lr, seed=seed,
                                 progress=False)
            learned = setup.learned_model(seed=seed)
            valid_ll = float(learned.log_prob(ds.valid, st.quadrature_points).mean())
            rec = {
                "restart": r,
                "seed": seed,
                "options": setup.options,
                "valid_ll": valid_ll,
                "final_loss": fitted.epoch_losses[-1] if fitted.epoch_losses else math.nan,
                "seconds_per_epoch": fitted.seconds_per_epoch,
                "encoder_passes_per_point": fitted.encoder_passes_per_point,
                "decoder_passes_per_point": fitted.decoder_passes_per_point,
            }
            restarts.append(rec)
            if best is None or (math.isfinite(valid_ll) and not valid_ll <= best["rec"]["valid_ll"]):
                codes = None
                if method == "VAE":
                    with torch.no_grad():
                        codes = setup.guide.distribution(ds.train).mean
                best = {"rec": rec, "learned": learned, "codes": codes, "setup": setup}
    assert best is not None
    pyro.set_rng_seed(job_seed(name, draw, method, -1))
    learned = best["learned"]
    true_test = ds.true_log_prob(ds.test, st.quadrature_points).double()
    test_ll = learned.log_prob(ds.test, st.quadrature_points)
    kl_points = true_test - test_ll
    spec = {kk: vv for kk, vv in job.items() if kk not in ("settings", "seeds")}
    out = {
        **{kk: job[kk] for kk in ("dataset", "draw", "method", "label")},
        "num_top": k if method.startswith("MAPA") else None,
        "num_samples": s if method.startswith("MAPA") else (p if method == "IWAE" else None),
        "test_ll": float(test_ll.mean()),
        "true_test_ll": float(true_test.mean()),
        "test_kl": float(kl_points.mean()),
        "test_kl_se_points": float(kl_points.std() / math.sqrt(len(kl_points))),
        "best_restart": best["rec"]["restart"],
        "options": best["rec"]["options"],
        "restarts": restarts,
        "seconds_per_epoch": sum(x["seconds_per_epoch"] for x in restarts) / len(restarts),
        "encoder_passes_per_point": best["rec"]["encoder_passes_per_point"],
        "decoder_passes_per_point": best["rec"]["decoder_passes_per_point"],
        "job": spec,
    }
    out["passes_per_point_per_step"] = out["encoder_passes_per_point"] + out["decoder_passes_per_point"]
    out["collapse"] = collapse_summary(best["setup"], learned, ds.test[: st.collapse_points])
    if job.get("grid"):
        grid, extent = _grid(torch.cat([ds.train, ds.test]), st.grid_size)
        out["grid_extent"] = extent
        out["grid_log_density"] = learned.log_prob(grid, st.quadrature_points).float().tolist()
        if method == "VAE":
            out["grid_true_log_density"] = ds.true_log_prob(grid, st.quadrature_points).float().tolist()
        with torch.no_grad():
            out["samples"] = learned.sample(500, torch.Generator().manual_seed(draw)).tolist()
            if method == "VAE":
                # Decoder means at the encoder means of the training points: "variant 2" of §6.4.
                out["vae_decoded_codes"] = learned.decoder(best["codes"]).tolist()
    return out


def _jobs(st: ReproductionSettings) -> list[dict[str, Any]]:
    settings = jsonable(st)
    jobs = []
    for name in st.datasets:
        for draw in range(st.draws):
            for method in st.methods:
                jobs.append({"dataset": name, "draw": draw, "method": method, "label": method,
                             "settings": settings, "grid": draw == 0, "kind": "main"})
            if "MAPA" in st.methods:
                for k, s in st.extra_mapa:
                    jobs.append({"dataset": name, "draw": draw, "method": "MAPA", "num_top": k,
                                 "num_samples": s, "label": _label("MAPA", k, s), "settings": settings,
                                 "kind": "main"})
        # The cost sweep (Fig. 2b): first draw only, one restart.
        over = {"restarts": 1}
        sweep = {**settings, **over}
        for k, s in st.sweep_mapa:
            jobs.append({"dataset": name, "draw": 0, "method": "MAPA", "num_top": k, "num_samples": s,
                         "label": _label("MAPA", k, s), "settings": sweep, "settings_overrides": over,
                         "kind": "sweep"})
        for p in st.sweep_iwae:
            jobs.append({"dataset": name, "draw": 0, "method": "IWAE", "particles": p,
                         "label": _label("IWAE", None, p), "settings": sweep, "settings_overrides": over,
                         "kind": "sweep"})
    return jobs


def _identity(job: dict[str, Any]) -> str:
    """Jobs with equal identities compute the same numbers (e.g. a sweep point equal to a main job)."""
    st = job["settings"]
    key = [job["dataset"], job["draw"], job["method"], job.get("num_top", st["num_top"]),
           job.get("num_samples", st["num_samples"]), job.get("particles", st["iwae_particles"]),
           job.get("seeds"), st]
    return json.dumps(key, sort_keys=True)


def _light(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its grid densities and samples (what ``raw_results.json`` keeps)."""
    heavy = ("samples", "vae_decoded_codes")
    return {k: v for k, v in result.items() if not k.startswith("grid") and k not in heavy}


def _run_all(jobs: list[dict[str, Any]], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Runs each distinct job once (the one asked for a grid, if any) and returns one result per job."""
    unique: dict[str, dict[str, Any]] = {}
    for job in jobs:
        key = _identity(job)
        if key not in unique or (job.get("grid") and not unique[key].get("grid")):
            unique[key] = job
    todo = list(unique.values())
    bar = tqdm(total=len(todo), desc="reproduce", unit="job", disable=not progress)
    done: dict[str, dict[str, Any]] = {}
    if workers > 1:
        # The platform's default start method (fork on Linux): a worker may inherit this
        # process's RNG states and param store, which run_job reseeds and clears.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for job, res in zip(todo, pool.map(run_job, todo), strict=True):
                done[_identity(job)] = res
                bar.update()
    else:
        for job in todo:
            done[_identity(job)] = run_job(job)
            bar.update()
    bar.close()
    results = []
    for job in jobs:
        res = dict(done[_identity(job)])
        if not job.get("grid"):
            res = _light(res)
        spec = {k: v for k, v in job.items() if k != "settings"}
        res.update(label=job["label"], kind=job["kind"], job=spec)
        results.append(res)
    return results


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def summarize(results: list[dict[str, Any]], st: ReproductionSettings) -> dict[str, Any]:
    """Per data set and method: mean and standard error of the test KL over draws, and costs."""
    out: dict[str, Any] = {"datasets": {}, "sweep": {}}
    for name in st.datasets:
        per: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            if r["dataset"] == name and r["kind"] == "main":
                per.setdefault(r["label"], []).append(r)
        entry = {}
        for label, rs in per.items():
            kls = torch.tensor([r["test_kl"] for r in rs], dtype=torch.float64)
            se = float(kls.std() / math.sqrt(len(kls))) if len(kls) > 1 else rs[0]["test_kl_se_points"]
            entry[label] = {
                "test_kl_mean": float(kls.mean()),
                "test_kl_se": se,
                **{f"{key}_mean": _mean(rs, key) for key in ("test_ll", "true_test_ll")},
                **{key: _mean(rs, key) for key in ("passes_per_point_per_step", "encoder_passes_per_point",
                                              "decoder_passes_per_point", "seconds_per_epoch")},
                "test_kl_per_draw": [float(v) for v in kls],
                "num_draws": len(rs),
            }
        out["datasets"][name] = entry
        out["sweep"][name] = [
            {kk: r[kk] for kk in ("label", "method", "num_top", "num_samples", "test_kl",
                                  "passes_per_point_per_step", "encoder_passes_per_point",
                                  "decoder_passes_per_point")}
            for r in results
            if r["dataset"] == name and r["kind"] == "sweep"
        ]
    return out


def gaussian_reference(st: ReproductionSettings) -> dict[str, Any]:
    """Test KL of a full-covariance Gaussian fitted to each draw's training points.

    The bar a model must clear to have "learned something" beyond the data's mean and covariance.
    """
    out = {}
    for name in st.datasets:
        kls = []
        for draw in range(st.draws):
            ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=draw)
            x = ds.train.double()
            gauss = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T))
            true = ds.true_log_prob(ds.test, st.quadrature_points).double()
            kls.append(float((true - gauss.log_prob(ds.test.double())).mean()))
        out[name] = {"gaussian_fit_test_kl_mean": sum(kls) / len(kls), "gaussian_fit_test_kl_per_draw": kls}
    return out


def run_reproduction(
    st: ReproductionSettings, output: Path, progress: bool = True, command: Sequence[str] | str | None = None
) -> dict[str, Any]:
    """Runs every job; writes ``paper_reproduction.json``, ``raw_results.json`` and figures to ``output``."""
    from . import figures

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # The code that runs is the code at the start: record it now, and say so if the tree changes meanwhile.
    prov = provenance(st, jobs=st.jobs, threads_per_job=st.threads_per_job, command=command)
    start = time.perf_counter()
    results = _run_all(_jobs(st), st.jobs, progress)
    summary = summarize(results, st)
    with _threads(st.threads_per_job):
        summary["reference"] = gaussian_reference(st)
        figures.make_all(results, summary, st, output)  # also adds the §6.4 numbers to the summary
    elapsed = time.perf_counter() - start
    summary["settings"] = {
        **jsonable(st),
        "wall_clock_seconds": round(elapsed, 1),
        "kl_se": "standard error over draws (over test points when there is one draw)",
        "passes": "encoder + decoder rows per data point per gradient step, best restart",
    }
    if git_state() != prov["git"]:
        prov["git_at_end"] = git_state()  # the tree changed while the jobs ran
    summary["provenance"] = prov
    (output / "paper_reproduction.json").write_text(json.dumps(summary, indent=2) + "\n")
    raw = {"provenance": prov, "settings": jsonable(st), "results": [_light(r) for r in results]}
    (output / "raw_results.json").write_text(json.dumps(raw, indent=1) + "\n")
    return summary
