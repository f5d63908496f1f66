"""The paper's experiments (§6, App. C-D) end to end: train, select, evaluate, summarize.

For every data set, draw and method: ``restarts`` random restarts are trained with
:func:`~pyro_mapa.training.fit`; the restart with the best validation log-likelihood is
kept, and its exact test log-likelihood (quadrature over the 1-D latent, with the prior
recovered by a Gaussian copula for the MAPA variants) gives the test KL

.. math:: \\mathrm{KL} = \\frac{1}{|T|}\\sum_{x \\in T} \\log p_{true}(x) - \\log p_{learned}(x).

Jobs (one per data set × draw × method) run in a process pool, one torch thread each.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pyro
import torch
from tqdm.auto import tqdm

from ..table.posterior_table import PosteriorTable
from ..training.fit import fit
from .datasets import DATASET_NAMES, load_dataset
from .methods import METHODS, build_method, true_posterior_table

__all__ = ["ReproductionSettings", "run_job", "run_reproduction", "summarize"]


@dataclass
class ReproductionSettings:
    """Everything that defines a reproduction run (stored in the output JSON)."""

    datasets: Sequence[str] = DATASET_NAMES
    methods: Sequence[str] = METHODS
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
    grid_size: int = 100
    jobs: int = 2

    @classmethod
    def quick(cls, **overrides: Any) -> ReproductionSettings:
        """A few minutes on two cores: small data, few epochs, one draw, one restart."""
        base = dict(
            draws=1,
            restarts=1,
            epochs=20,
            num_train=300,
            num_valid=200,
            num_test=300,
            extra_mapa=(),
            sweep_mapa=((1, 0), (5, 5)),
            sweep_iwae=(1, 10),
            quadrature_points=1001,
            grid_size=40,
        )
        base.update(overrides)
        return cls(**base)


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
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Trains one method on one draw with restarts; returns its evaluation (picklable)."""
    torch.set_num_threads(1)
    st = ReproductionSettings(**job["settings"])
    name, draw, method = job["dataset"], job["draw"], job["method"]
    k, s, p = job.get("num_top", st.num_top), job.get("num_samples", st.num_samples), job.get("particles", st.iwae_particles)
    ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=draw)
    table = None
    if method == "MAPA":
        table = PosteriorTable.from_data(ds.train, ds.likelihood.kernel())
    elif method == "MAPA-GT":
        table = true_posterior_table(ds.train, ds.train_z, ds.decoder, ds.likelihood)
    elif method == "MAPA-naive":
        table = PosteriorTable.uniform(len(ds.train))
    best: dict[str, Any] | None = None
    restarts = []
    for r in range(st.restarts):
        pyro.clear_param_store()
        seed = 1000 * draw + r
        setup = build_method(
            method, ds.train, ds.likelihood, hidden=st.hidden, num_top=k, num_samples=s,
            num_particles=p, table=table, seed=seed,
        )
        fitted = fit(
            setup.model, setup.guide, setup.loss, len(ds.train), epochs=st.epochs,
            batch_size=st.batch_size, lr=st.lr, seed=seed, progress=False,
        )
        learned = setup.learned_model()
        valid_ll = float(learned.log_prob(ds.valid, st.quadrature_points).mean())
        rec = {
            "restart": r,
            "valid_ll": valid_ll,
            "final_loss": fitted.epoch_losses[-1],
            "seconds_per_epoch": fitted.seconds_per_epoch,
            "encoder_passes_per_point": fitted.encoder_passes_per_point,
            "decoder_passes_per_point": fitted.decoder_passes_per_point,
        }
        restarts.append(rec)
        if best is None or (math.isfinite(valid_ll) and valid_ll > best["rec"]["valid_ll"]):
            codes = None
            if method == "VAE":
                with torch.no_grad():
                    codes = setup.guide.distribution(ds.train).mean
            best = {"rec": rec, "learned": learned, "codes": codes}
    assert best is not None
    learned = best["learned"]
    true_test = ds.true_log_prob(ds.test, st.quadrature_points).double()
    test_ll = learned.log_prob(ds.test, st.quadrature_points)
    kl_points = true_test - test_ll
    out = {
        **{kk: job[kk] for kk in ("dataset", "draw", "method", "label")},
        "num_top": k if method.startswith("MAPA") else None,
        "num_samples": s if method.startswith("MAPA") else (p if method == "IWAE" else None),
        "test_ll": float(test_ll.mean()),
        "true_test_ll": float(true_test.mean()),
        "test_kl": float(kl_points.mean()),
        "test_kl_se_points": float(kl_points.std() / math.sqrt(len(kl_points))),
        "best_restart": best["rec"]["restart"],
        "restarts": restarts,
        "seconds_per_epoch": sum(x["seconds_per_epoch"] for x in restarts) / len(restarts),
        "encoder_passes_per_point": best["rec"]["encoder_passes_per_point"],
        "decoder_passes_per_point": best["rec"]["decoder_passes_per_point"],
    }
    out["passes_per_point_per_step"] = out["encoder_passes_per_point"] + out["decoder_passes_per_point"]
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
                best_setup_codes = learned.decoder(best["codes"])
                out["vae_decoded_codes"] = best_setup_codes.tolist()
    return out


def _jobs(st: ReproductionSettings) -> list[dict[str, Any]]:
    settings = asdict(st)
    jobs = []
    for name in st.datasets:
        for draw in range(st.draws):
            for method in st.methods:
                jobs.append({"dataset": name, "draw": draw, "method": method, "label": method,
                             "settings": settings, "grid": draw == 0, "kind": "main"})
            if "MAPA" in st.methods:
                for k, s in st.extra_mapa:
                    jobs.append({"dataset": name, "draw": draw, "method": "MAPA", "num_top": k, "num_samples": s,
                                 "label": _label("MAPA", k, s), "settings": settings, "kind": "main"})
        # The cost sweep (Fig. 2b): first draw only, one restart.
        sweep_settings = {**settings, "restarts": 1}
        for k, s in st.sweep_mapa:
            jobs.append({"dataset": name, "draw": 0, "method": "MAPA", "num_top": k, "num_samples": s,
                         "label": _label("MAPA", k, s), "settings": sweep_settings, "kind": "sweep"})
        for p in st.sweep_iwae:
            jobs.append({"dataset": name, "draw": 0, "method": "IWAE", "particles": p,
                         "label": _label("IWAE", None, p), "settings": sweep_settings, "kind": "sweep"})
    return jobs


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
                "test_ll_mean": sum(r["test_ll"] for r in rs) / len(rs),
                "true_test_ll_mean": sum(r["true_test_ll"] for r in rs) / len(rs),
                "passes_per_point_per_step": sum(r["passes_per_point_per_step"] for r in rs) / len(rs),
                "encoder_passes_per_point": sum(r["encoder_passes_per_point"] for r in rs) / len(rs),
                "decoder_passes_per_point": sum(r["decoder_passes_per_point"] for r in rs) / len(rs),
                "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in rs) / len(rs),
                "test_kl_per_draw": [float(v) for v in kls],
                "num_draws": len(rs),
            }
        out["datasets"][name] = entry
        out["sweep"][name] = [
            {kk: r[kk] for kk in ("label", "method", "num_top", "num_samples", "test_kl",
                                  "passes_per_point_per_step", "encoder_passes_per_point", "decoder_passes_per_point")}
            for r in results
            if r["dataset"] == name and r["kind"] == "sweep"
        ]
    return out


def run_reproduction(st: ReproductionSettings, output: Path, progress: bool = True) -> dict[str, Any]:
    """Runs every job, writes ``paper_reproduction.json`` and the figures into ``output``."""
    from . import figures

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(st)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="reproduce", unit="job", disable=not progress)
    if st.jobs > 1:
        with ProcessPoolExecutor(max_workers=st.jobs) as pool:
            for res, job in zip(pool.map(run_job, jobs), jobs):
                results.append({**res, "kind": job["kind"]})
                bar.update()
    else:
        for job in jobs:
            results.append({**run_job(job), "kind": job["kind"]})
            bar.update()
    bar.close()
    summary = summarize(results, st)
    elapsed = time.perf_counter() - start
    summary["settings"] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(st).items()},
        "wall_clock_seconds": round(elapsed, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, pyro {pyro.__version__}",
        "kl_se": "standard error over draws (over test points when there is one draw)",
        "passes": "encoder + decoder rows per data point per gradient step, best restart",
    }
    figures.make_all(results, summary, st, output)  # also adds the §6.4 numbers to the summary
    (output / "paper_reproduction.json").write_text(json.dumps(summary, indent=2) + "\n")
    light = [{k: v for k, v in r.items() if not k.startswith("grid") and k not in ("samples", "vae_decoded_codes")}
             for r in results]
    (output / "raw_results.json").write_text(json.dumps(light, indent=1) + "\n")
    return summary
