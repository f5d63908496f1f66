r"""LiBI's four benchmarks (docs/datasets.md) with LiBI, its baselines, IWAE and MAPA: one command.

``pyro-mapa libi-benchmarks [--quick] [--output DIR]`` trains every method of :data:`LIBI_METHODS` on
``linear_jtex``, ``cubic_jtex``, ``gaussian_4d`` and ``mobius``, with two network settings:

- ``"paper"``: generative models of the true process's form (linear; cubed linear; linear into
  R⁴; the Mobius network's architecture) and the paper's inference networks (linear; a 4-unit
  layer of half sigmoid, half cube-root units then 20 ReLU units; linear; 1×50 ReLU);
- ``"mlp"``: 2×50 LeakyReLU networks for both.

Every job (data set × setting × method × hyperparameters × restart) is a pure function of its spec
and seed (:func:`run_job`); the hyperparameters (:data:`LIBI_GRIDS`) and restart of each method are
chosen on the exact validation log-likelihood (:func:`summarize`). Each job records: exact validation
and test log-likelihood by quadrature around each posterior mode
(:meth:`~pyro_mapa.priors.LearnedModel.local_log_prob`), the test KL to the truth, the paper's
importance-sampling estimate, ``KL(q_agg ‖ p)`` and ``E_x KL(q(z|x) ‖ p_θ(z|x))`` by quadrature
(:mod:`.libi_metrics`), the two-sample MMD² between 500 model samples and the test set, and the
network passes per point per step.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pyro
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_mapa.errors import NonFiniteLossError
from pyro_mapa.models import AmortizedCodebook, MeanFieldGuide, mlp
from pyro_mapa.training.threads import torch_threads
from pyro_mapa.datasets import LIBI_DATASET_NAMES, load_dataset
from .libi_metrics import aggregate_kl, elbo_by_quadrature, mmd2, paper_importance_log_likelihood
from pyro_mapa.methods import build_method
from .provenance import jsonable, provenance

__all__ = ["LIBI_GRIDS", "LIBI_METHODS", "LiBIBenchmarkSettings", "paper_networks", "reference_mmd2", "run_job",
           "run_libi_benchmarks", "summarize", "write_summary"]

LIBI_METHODS = ("VAE", "beta-VAE", "annealed-beta-VAE", "Lagging", "LiBI", "ExactDecoder", "IWAE", "MAPA",
                "MAPA-free")
NETWORK_SETTINGS = ("paper", "mlp")
# Reduced from the paper's grids (SEED: 10 restarts, ε_HZ ∈ {0.001, 1, 10, 20}, ε_Σ, ε_μ ∈ {0.2, 0.5}, R ∈ {1, 6};
# Lagging's R in the tens over 30k epochs): see docs/results.md for what we cut and why.
LIBI_GRIDS: dict[str, list[dict]] = {
    "beta-VAE": [{"beta": 0.5}, {"beta": 2.0}, {"beta": 5.0}],
    "annealed-beta-VAE": [{"beta": 0.5}, {"beta": 1.0}, {"beta": 2.0}, {"beta": 5.0}],
    "Lagging": [{"segments": 5}, {"segments": 20}],
    # the exact-likelihood method's fixed grid costs 301² decoder rows per step at its default: 101² here
    "ExactDecoder": [{"num_points": 101}],
    "LiBI": [{"hz_weight": w, "rounds": r, "cov_scale": 0.5, "mean_scale": 0.5} for w in (1.0, 10.0) for r in (1, 3)],
}


class Cube(nn.Module):
    """``t ↦ t³`` elementwise (the cubed-linear generative model of ``cubic_jtex``)."""

    def forward(self, t: Tensor) -> Tensor:
        return t**3


class HalfSigmoidCubeRoot(nn.Module):
    """Half the units through a sigmoid, half through a cube root (``cubic_jtex``'s inference network).

    The cube root is ``sign(t) ((|t| + ε)^{1/3} − ε^{1/3})``, ``ε = 0.01``: continuous, with a slope of at
    most 7 at 0 instead of an infinite one (which sent LiBI's code network to NaN in a trial run).
    """

    eps = 0.01

    def forward(self, t: Tensor) -> Tensor:
        k = t.shape[-1] // 2
        a, b = t[..., :k], t[..., k:]
        root = (b.abs() + self.eps) ** (1 / 3) - self.eps ** (1 / 3)
        return torch.cat([torch.sigmoid(a), torch.sign(b) * root], -1)


def paper_networks(dataset: str):
    """``networks(role, in, out)`` for :func:`~pyro_mapa.methods.build_method`: the paper's forms."""

    def networks(role: str, n_in: int, n_out: int) -> nn.Module:
        if role == "decoder":
            if dataset == "mobius":
                return mlp(n_in, n_out, (50, 50), nn.Tanh)  # the Mobius network's architecture
            linear = nn.Linear(n_in, n_out)
            return nn.Sequential(linear, Cube()) if dataset == "cubic_jtex" else linear
        if dataset == "mobius":
            return mlp(n_in, n_out, (50,), nn.ReLU)
        if dataset == "cubic_jtex":
            return nn.Sequential(nn.Linear(n_in, 4), HalfSigmoidCubeRoot(), nn.Linear(4, 20), nn.ReLU(),
                                 nn.Linear(20, n_out))
        return nn.Linear(n_in, n_out)

    return networks


@dataclass
class LiBIBenchmarkSettings:
    """Everything that defines a run (stored in the JSON)."""

    datasets: Sequence[str] = LIBI_DATASET_NAMES
    methods: Sequence[str] = LIBI_METHODS
    settings: Sequence[str] = NETWORK_SETTINGS
    restarts: int = 2
    mlp_restarts: int = 1
    epochs: int = 300
    batch_size: int = 100
    lr: float = 5e-3
    draw: int = 0
    is_samples: int = 5000
    flow_steps: int = 1000
    model_samples: int = 500
    jobs: int = 1
    is_quick: bool = False

    def __post_init__(self) -> None:
        for name, values, allowed in (("datasets", self.datasets, LIBI_DATASET_NAMES),
                                      ("methods", self.methods, LIBI_METHODS),
                                      ("settings", self.settings, NETWORK_SETTINGS)):
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; choose from {', '.join(allowed)}")

    @classmethod
    def quick(cls, **overrides: Any) -> LiBIBenchmarkSettings:
        """One data set (linear_jtex), the paper's networks, one restart, 60 epochs, no grids' second values."""
        base: dict[str, Any] = dict(datasets=("linear_jtex",), settings=("paper",), restarts=1, epochs=60,
                                    is_samples=500, flow_steps=200, model_samples=200, is_quick=True)
        base.update(overrides)
        return cls(**base)


def job_seed(key: str) -> int:
    """A 31-bit seed from a job's identity string (independent of run order and worker)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF


def make_jobs(s: LiBIBenchmarkSettings) -> list[dict[str, Any]]:
    """The jobs of a run, each a JSON-able spec with its seed."""
    jobs = []
    for dataset in s.datasets:
        for setting in s.settings:
            restarts = s.restarts if setting == "paper" else s.mlp_restarts
            for method in s.methods:
                grid = LIBI_GRIDS.get(method, [{}])
                if s.is_quick:
                    grid = grid[:1]
                for options in grid:
                    for restart in range(restarts):
                        key = f"{dataset}/{s.draw}/{setting}/{method}/{json.dumps(options, sort_keys=True)}/{restart}"
                        jobs.append(dict(dataset=dataset, setting=setting, method=method, options=options,
                                         restart=restart, seed=job_seed(key), draw=s.draw, epochs=s.epochs,
                                         batch_size=s.batch_size, lr=s.lr, is_samples=s.is_samples,
                                         flow_steps=s.flow_steps, model_samples=s.model_samples))
    return jobs


def _encoder_q(setup, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``q(z | x)``'s location and scale, for methods with a mean-field Gaussian guide."""
    if not isinstance(setup.guide, MeanFieldGuide):
        return None
    with torch.no_grad():
        q = setup.guide.distribution(x).base_dist
    return q.loc, q.scale


def _start_points(setup, x: Tensor) -> Tensor | None:
    """Where the method itself puts ``x`` in latent space (q's mean, or MAPA's code ``g(x)``): a mode search start."""
    q = _encoder_q(setup, x)
    if q is not None:
        return q[0]
    codebook = getattr(setup.model, "codebook", None)
    if isinstance(codebook, AmortizedCodebook):
        with torch.no_grad():
            return codebook.encoder(x)
    return None


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Trains one job and evaluates it (see the module docstring); deterministic given the spec."""
    with torch_threads(1):
        pyro.clear_param_store()
        torch.manual_seed(job["seed"])
        ds = load_dataset(job["dataset"], seed=job["draw"])
        networks = paper_networks(job["dataset"]) if job["setting"] == "paper" else None
        setup = build_method(job["method"], ds.train, ds.likelihood, latent_dim=2, seed=job["seed"],
                             options=job["options"] or None, networks=networks)
        setup.valid_data = ds.valid
        start = time.perf_counter()
        try:
            fitted = setup.train(epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"], seed=job["seed"],
                                 progress=False)
        except (NonFiniteLossError, ValueError) as err:  # a diverged run is a result, not a crash
            return {"job": job, "valid_ll": -math.inf, "failed": f"{type(err).__name__}: {err}"[:300]}
        train_seconds = time.perf_counter() - start
        learned = setup.learned_model(flow_steps=job["flow_steps"], seed=job["seed"])
        valid_ll = learned.local_log_prob(ds.valid, starts=_start_points(setup, ds.valid), newton_steps=50)
        test_ll = learned.local_log_prob(ds.test, starts=_start_points(setup, ds.test), newton_steps=50)
        true_ll = ds.true_log_prob(ds.test).double()
        gen = torch.Generator().manual_seed(job["seed"])
        samples = learned.sample(job["model_samples"], generator=gen)
        out: dict[str, Any] = dict(
            valid_ll=float(valid_ll.mean()), test_ll=float(test_ll.mean()), test_kl=float((true_ll - test_ll).mean()),
            true_test_ll=float(true_ll.mean()), mmd2=mmd2(samples, ds.test[: job["model_samples"]]),
            passes_per_point=fitted.passes_per_point, steps=fitted.steps, train_seconds=train_seconds,
            seconds_per_epoch=fitted.seconds_per_epoch, final_loss=fitted.epoch_losses[-1],
        )
        q = _encoder_q(setup, ds.test)
        if q is not None:
            is_ll, is_se = paper_importance_log_likelihood(setup.decoder, ds.likelihood, *q, ds.test,
                                                           num_samples=job["is_samples"], seed=job["seed"])
            elbo = elbo_by_quadrature(setup.decoder, ds.likelihood, *q, ds.test)
            out.update(paper_is_ll=float(is_ll.mean()), paper_is_se=float(is_se.pow(2).sum().sqrt() / len(is_ll)),
                       test_elbo=float(elbo.mean()), posterior_kl=float((test_ll - elbo).mean()),
                       aggregate_kl=aggregate_kl(*q))
        return {"job": job, **out}


def _run_all(jobs: list[dict[str, Any]], workers: int, progress: bool,
             partial: Path | None = None) -> list[dict[str, Any]]:
    """Runs the jobs (``workers`` processes); each finished record is also appended to ``partial`` (JSON
    lines), so a run that stops keeps what it finished: the records of ``partial`` whose job is asked
    again are reused, not rerun."""
    done: dict[str, dict[str, Any]] = {}
    if partial is not None and partial.exists():
        for line in partial.read_text().splitlines():
            rec = json.loads(line)
            done[json.dumps(rec["job"], sort_keys=True)] = rec
    todo = [j for j in jobs if json.dumps(jsonable(j), sort_keys=True) not in done]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="LiBI benchmarks", unit="job",
               disable=not progress)

    def keep(res: dict[str, Any]) -> None:
        done[json.dumps(jsonable(res["job"]), sort_keys=True)] = res
        if partial is not None:
            with partial.open("a") as f:
                f.write(json.dumps(jsonable(res)) + "\n")
        bar.update()

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(run_job, todo):
                keep(res)
    else:
        for job in todo:
            keep(run_job(job))
    bar.close()
    return [done[json.dumps(jsonable(j), sort_keys=True)] for j in jobs]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data set, setting, method): the job with the best validation log-likelihood."""
    best: dict[tuple, dict[str, Any]] = {}
    scores: dict[tuple, float] = {}  # NaN and +inf score -inf: a NaN kept first would beat nothing and stay
    for rec in records:
        j = rec["job"]
        key = (j["dataset"], j["setting"], j["method"])
        score = rec["valid_ll"] if math.isfinite(rec["valid_ll"]) else -math.inf
        if key not in best or score > scores[key]:
            best[key], scores[key] = rec, score
    rows = []
    for key, rec in best.items():
        dataset, setting, method = key
        row = {"dataset": dataset, "setting": setting, "method": method, "options": rec["job"]["options"],
               "restart": rec["job"]["restart"]}
        row.update({k: v for k, v in rec.items() if k != "job"})
        same = [r for r in records if (r["job"]["dataset"], r["job"]["setting"], r["job"]["method"]) == key]
        row["candidates"], row["failed_candidates"] = len(same), sum("failed" in r for r in same)
        rows.append(row)
    return rows


def reference_mmd2(dataset: str, draw: int = 0, num: int = 500) -> float:
    """MMD² between ``num`` fresh draws of the true process and the test set: the statistic's floor."""
    ds = load_dataset(dataset, seed=draw)
    fresh = load_dataset(dataset, num_train=num, num_valid=1, num_test=1, seed=10_000 + draw).train
    return mmd2(fresh, ds.test[:num])


def write_summary(directory: str | Path) -> dict[str, Any]:
    """(Re)writes ``libi_benchmarks.json`` in ``directory`` from its ``raw_results.json``: selection and floors."""
    directory = Path(directory)
    raw = json.loads((directory / "raw_results.json").read_text())
    meta = raw["settings"]
    wall = raw.get("wall_clock_seconds")
    summary = {"provenance": raw["provenance"], "settings": meta, "rows": summarize(raw["results"]),
               "reference_mmd2": {d: reference_mmd2(d, meta["draw"], meta["model_samples"]) for d in meta["datasets"]},
               "wall_clock_seconds": wall,
               "merged": [{"commit": (m["provenance"].get("git") or {}).get("commit"), "replaced": m["replaced"]}
                          for m in raw.get("merged", [])]}
    (directory / "libi_benchmarks.json").write_text(json.dumps(jsonable(summary), indent=1) + "\n")
    return summary


def _merge(out: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw``'s records in place of the recorded ones of the same (data set, setting, method)."""
    old = json.loads((out / "raw_results.json").read_text())
    redone = {(r["job"]["dataset"], r["job"]["setting"], r["job"]["method"]) for r in raw["results"]}
    kept = [r for r in old["results"]
            if (r["job"]["dataset"], r["job"]["setting"], r["job"]["method"]) not in redone]
    history = old.get("merged", []) + [{"provenance": raw["provenance"], "replaced": sorted(map(list, redone)),
                                        "settings": raw["settings"], "wall_clock_seconds": raw["wall_clock_seconds"]}]
    return {**old, "results": kept + raw["results"], "merged": history}


def run_libi_benchmarks(settings: LiBIBenchmarkSettings, output: str | Path | None = None,
                        progress: bool = True, merge: bool = False) -> dict[str, Any]:
    """Runs every job, writes ``raw_results.json`` (records, replayable by ``reproduce --check``) and
    ``libi_benchmarks.json`` (the selected rows) under ``output``, and returns the summary.

    ``merge=True`` reruns only ``settings``' jobs into an existing ``output``: their (data set, setting,
    method) records replace the recorded ones, the rest are kept, and ``raw_results.json`` lists each
    merge with its provenance under ``"merged"`` (every record still replays by its own spec and seed).
    """
    if merge and (output is None or not (Path(output) / "raw_results.json").exists()):
        raise ValueError("merge=True needs an output directory holding a raw_results.json to merge into")
    start = time.perf_counter()
    partial = None
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        partial = Path(output) / "raw_results.partial.jsonl"
    records = _run_all(make_jobs(settings), settings.jobs, progress, partial)
    meta = {**asdict(settings), "experiment": "libi_benchmarks"}
    prov = provenance(jobs=settings.jobs, threads_per_job=1)
    raw = {"provenance": prov, "settings": meta, "results": records, "wall_clock_seconds": time.perf_counter() - start}
    if merge:
        raw = _merge(Path(output), raw)
    if output is None:
        return {"provenance": prov, "settings": meta, "rows": summarize(records)}
    out = Path(output)
    (out / "raw_results.json").write_text(json.dumps(jsonable(raw), indent=1) + "\n")
    partial.unlink(missing_ok=True)  # everything is in raw_results.json now
    return write_summary(out)
