"""Figures of the reproduction (matplotlib, saved as PNG): Fig. 2a, Fig. 2b, §6.3 and §6.4."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_mapa.evaluation.index_loglik import index_log_likelihood  # noqa: E402
from pyro_mapa.datasets import load_dataset  # noqa: E402

__all__ = [
    "densities_figure",
    "density_columns",
    "density_panels",
    "make_all",
    "plot_densities",
    "plot_kl_vs_passes",
    "plot_non_identifiability",
    "plot_posterior_trends",
    "posterior_trend_curves",
]


def density_columns(methods) -> list[str]:
    """The densities figure's method columns after the truth: MAPA first (if run), then the others in run order."""
    methods = list(methods)
    return [m for m in methods if m == "MAPA"] + [m for m in methods if m != "MAPA"]


def _grid_from_extent(extent: list[float], size: int) -> torch.Tensor:
    """The ``size``² grid points of a result's ``grid_extent``, in the order of its ``grid_log_density``."""
    gx = torch.linspace(extent[0], extent[1], size)
    gy = torch.linspace(extent[2], extent[3], size)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


def density_panels(results: list[dict[str, Any]], st) -> list[dict[str, Any]]:
    """Per data set (a row of the figure): its name, grid extent and ``(title, log density, test KL)`` panels.

    The first panel is the truth: the stored ``grid_true_log_density`` (a VAE job stores it), else computed
    here on the same grid from the first draw's data set (a run without a VAE, such as the seed methods).
    Then one panel per method in :func:`density_columns` order; a method without a grid gets ``None``.
    """
    rows = []
    for name in st.datasets:
        main = {r["method"]: r for r in results
                if r["dataset"] == name and r.get("grid_extent") and r["label"] == r["method"]}
        extent = next((r["grid_extent"] for r in main.values()), None)
        truth = next((r["grid_true_log_density"] for r in main.values() if "grid_true_log_density" in r), None)
        if truth is None and extent is not None:
            ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=0)
            truth = ds.true_log_prob(_grid_from_extent(extent, st.grid_size), st.quadrature_points).float().tolist()
        panels = [("truth", truth, None)] + [
            (m, main[m]["grid_log_density"], main[m]["test_kl"]) if m in main else (m, None, None)
            for m in density_columns(st.methods)]
        rows.append({"dataset": name, "extent": extent, "panels": panels})
    return rows


def densities_figure(results: list[dict[str, Any]], st):
    """Fig. 2a as a matplotlib figure: a row per data set, titled on the left; columns truth, MAPA, the rest."""
    rows = density_panels(results, st)
    cols = 1 + len(st.methods)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols + 0.4, 2.2 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, (title, logd, kl) in enumerate(row["panels"]):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if logd is None:
                ax.set_visible(False)
                continue
            g = st.grid_size
            dens = torch.tensor(logd).reshape(g, g).exp()
            ax.imshow(dens.numpy(), origin="lower", extent=row["extent"], cmap="viridis", aspect="equal",
                      vmax=float(torch.quantile(dens.reshape(-1), 0.995)))
            ax.set_title(title if kl is None else f"{title}\nKL {kl:.3f}", fontsize=8,
                         fontweight="bold" if title in ("truth", "MAPA") else "normal")
            ax.set_xlabel("$x_1$", fontsize=7)
            ax.set_ylabel("$x_2$", fontsize=7)
        # The row title: on the first visible panel's left, outside the axes, so it shows with ticks off.
        first = next((axes[i, j] for j, p in enumerate(row["panels"]) if p[1] is not None), axes[i, 0])
        first.annotate(row["dataset"], xy=(0, 0.5), xycoords="axes fraction", xytext=(-16, 0),
                       textcoords="offset points", ha="right", va="center", rotation=90, fontsize=11,
                       fontweight="bold", annotation_clip=False)
    fig.suptitle("Learned densities p(x) (first draw, best restart by validation LL)\n"
                 "equal units on both axes; brighter = denser", fontsize=9)
    fig.tight_layout()
    return fig


def plot_densities(results: list[dict[str, Any]], st, path: Path) -> None:
    """Fig. 2a: learned densities (first draw, best restart) beside the true one, saved to ``path``."""
    fig = densities_figure(results, st)
    _save(fig, path, st)
    plt.close(fig)


def plot_kl_vs_passes(summary: dict[str, Any], st, path: Path) -> None:
    """Fig. 2b: test KL vs encoder+decoder passes per point per step, MAPA (K, S) vs IWAE (S)."""
    names = list(st.datasets)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = summary["sweep"].get(name, [])
        for method, marker in (("MAPA", "o"), ("IWAE", "s")):
            pts = sorted((r["passes_per_point_per_step"], r["test_kl"], r["label"]) for r in rows if r["method"] == method)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
            for x, y, label in pts:
                ax.annotate(label.replace(f"{method} ", ""), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("network passes / point / step")
        ax.set_ylabel("test KL")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, st)
    plt.close(fig)


def posterior_trend_curves(name: str, num_train: int, seed: int, test_points: int = 3) -> list[dict[str, Any]]:
    """§6.3 on the ground truth: for a few test points, three posteriors over the training codes.

    - ``log_mapa``: log MAPA :math:`q(c = i \\mid x)` (kernel between ``x`` and ``x_i``);
    - ``log_emp``: log true posterior of the empiricalized model, :math:`\\propto p(x \\mid f(z_i))`;
    - ``log_orig``: the original model's posterior density mapped to the index scale,
      :math:`\\log [p(z \\mid x) / (N \\varphi(z))]` on a grid of ``z`` (what ``log_emp`` is at
      :math:`z_i = z` in expectation, since the :math:`z_i` are prior draws).
    """
    ds = load_dataset(name, num_train=num_train, num_valid=1, num_test=max(test_points, 1), seed=seed)
    lik, kernel = ds.likelihood, ds.likelihood.kernel()
    z = ds.train_z[:, 0]
    order = torch.argsort(z)
    zgrid = torch.linspace(-3.5, 3.5, 1401, dtype=torch.float64).unsqueeze(-1)
    curves = []
    for n in range(test_points):
        x = ds.test[n : n + 1]
        log_k = kernel.log_kernel(x, ds.train)[0]
        log_mapa = log_k - log_k.logsumexp(0)
        ll = lik(ds.decoder(ds.train_z)).log_prob(x)
        log_emp = ll - ll.logsumexp(0)
        ll_grid = lik(ds.decoder(zgrid)).log_prob(x.double())
        log_prior = -0.5 * zgrid[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
        log_px = ds.true_log_prob(x).double()[0]
        log_orig = ll_grid - log_px - math.log(num_train)  # log[p(z|x) / (N φ(z))]
        curves.append({
            "test_index": n, "true_z": float(ds.test_z[n, 0]), "z": z[order].tolist(),
            "log_mapa": log_mapa[order].tolist(), "log_emp": log_emp[order].tolist(),
            "z_grid": zgrid[:, 0].tolist(), "log_orig": log_orig.tolist(), "log_prior_unused": float(log_prior[0]),
        })
    return curves


def plot_posterior_trends(st, path: Path, test_points: int = 3) -> None:
    """§6.3: log MAPA vs the true posteriors of the empiricalized and original models, against z."""
    names = list(st.datasets)
    fig, axes = plt.subplots(len(names), test_points, figsize=(3.3 * test_points, 2.4 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j, c in enumerate(posterior_trend_curves(name, st.num_train, 0, test_points)):
            ax = axes[i, j]
            top = max(max(c["log_emp"]), max(c["log_mapa"]))
            ax.plot(c["z_grid"], c["log_orig"], color="0.6", lw=1.5, label="original model p(z|x)")
            ax.scatter(c["z"], c["log_emp"], s=4, label="empiricalized model p(c|x)")
            ax.scatter(c["z"], c["log_mapa"], s=4, marker="x", label="MAPA q(c|x)")
            ax.axvline(c["true_z"], color="k", ls=":", lw=0.8)
            ax.set_ylim(top - 40, top + 3)
            zs = torch.tensor(c["z"])
            near = zs[(torch.tensor(c["log_emp"]) > top - 40) | (torch.tensor(c["log_mapa"]) > top - 40)]
            pad = 0.1 * float(near.max() - near.min()) + 0.02
            ax.set_xlim(float(near.min()) - pad, float(near.max()) + pad)
            ax.set_title(f"{name}, test point {c['test_index']}", fontsize=8)
            ax.set_xlabel("true latent z of training point i", fontsize=7)
            ax.set_ylabel("log posterior", fontsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    _save(fig, path, st)
    plt.close(fig)


def _index_posteriors(x: torch.Tensor, centers: torch.Tensor, lik) -> torch.Tensor:
    lp = index_log_likelihood(x, centers, lik)  # (n, N)
    return lp - lp.logsumexp(1, keepdim=True)


def non_identifiability_summary(results: list[dict[str, Any]], st, num_test: int = 200) -> dict[str, Any]:
    """§6.4: how close MAPA is to the index posterior of the true decoder (variant 1) and of a VAE's (variant 2).

    Both decoders fit the data; MAPA depends on the data only, so it is the same table
    for both. Reported per variant: mean total variation between MAPA and the variant's
    posterior, and the mean posterior mass inside MAPA's top-``K`` (``K`` = ``st.num_top``).
    """
    out = {}
    for name in ("absolute_value", "circle"):
        vae = next((r for r in results if r["dataset"] == name and r.get("vae_decoded_codes")), None)
        if vae is None:
            continue
        ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=0)
        lik = ds.likelihood
        x = ds.test[:num_test]
        log_q = lik.kernel().log_kernel(x, ds.train)
        log_q = log_q - log_q.logsumexp(1, keepdim=True)
        topk = torch.topk(log_q, st.num_top, dim=1).indices
        variants = {"variant 1 (true decoder)": ds.decoder(ds.train_z), "variant 2 (VAE decoder)": torch.tensor(vae["vae_decoded_codes"])}
        entry = {"vae_test_kl": vae["test_kl"]}
        for label, centers in variants.items():
            log_p = _index_posteriors(x, centers.float(), lik)
            tv = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(1)
            mass_top = log_p.exp().gather(1, topk).sum(1)
            entry[label] = {"mean_tv_to_mapa": float(tv.mean()), "mean_mass_in_mapa_top_k": float(mass_top.mean())}
        out[name] = entry
    return out


def plot_non_identifiability(results: list[dict[str, Any]], st, path: Path) -> dict[str, Any]:
    """§6.4 figure: both decoders' curves over the data, and their index posteriors vs MAPA for one point."""
    summary = non_identifiability_summary(results, st)
    names = list(summary)
    if not names:
        return summary
    fig, axes = plt.subplots(len(names), 2, figsize=(8, 3.2 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        vae = next(r for r in results if r["dataset"] == name and r.get("vae_decoded_codes"))
        ds = load_dataset(name, st.num_train, st.num_valid, st.num_test, seed=0)
        v1 = ds.decoder(ds.train_z)
        v2 = torch.tensor(vae["vae_decoded_codes"])
        ax = axes[i, 0]
        ax.scatter(ds.train[:, 0], ds.train[:, 1], s=2, color="0.7", label="training data")
        o1 = torch.argsort(ds.train_z[:, 0])
        ax.plot(v1[o1, 0], v1[o1, 1], lw=1.5, label="variant 1: true f(z_i)")
        ax.scatter(v2[:, 0], v2[:, 1], s=2, color="C1", label="variant 2: VAE f(g(x_i))")
        ax.set_title(f"{name}: two decoders that fit the data", fontsize=9)
        ax.set_xlabel("$x_1$", fontsize=7)
        ax.set_ylabel("$x_2$", fontsize=7)
        ax.set_aspect("equal", adjustable="datalim")  # x1 and x2 are the same quantity
        ax.legend(fontsize=7)
        ax = axes[i, 1]
        x = ds.test[:1]
        log_q = ds.likelihood.kernel().log_kernel(x, ds.train)[0]
        log_q = log_q - log_q.logsumexp(0)
        order = torch.argsort(log_q, descending=True)[:60]
        for label, centers in (("variant 1", v1), ("variant 2", v2.float())):
            lp = _index_posteriors(x, centers, ds.likelihood)[0]
            ax.plot(range(len(order)), lp[order], marker=".", lw=0.8, label=f"{label} p(c|x)")
        ax.plot(range(len(order)), log_q[order], marker="x", lw=0.8, color="k", label="MAPA q(c|x)")
        s = summary[name]
        ax.set_title(
            f"TV to MAPA: v1 {s['variant 1 (true decoder)']['mean_tv_to_mapa']:.2f}, "
            f"v2 {s['variant 2 (VAE decoder)']['mean_tv_to_mapa']:.2f}", fontsize=8)
        ax.set_xlabel("training indices, by MAPA rank (first test point)", fontsize=7)
        ax.set_ylabel("log posterior", fontsize=7)
        ax.set_ylim(float(log_q[order].min()) - 10, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, st)
    plt.close(fig)
    return summary


def _save(fig, path: Path, st) -> None:
    """Saves a figure; a quick run's figures say so in a banner across the top."""
    if getattr(st, "is_quick", False) is True:
        fig.text(0.5, 0.999, "QUICK RUN (reproduce --quick): one draw, one restart, not the paper's numbers",
                 ha="center", va="top", fontsize=8, color="darkred")
    fig.savefig(path, dpi=90)


def make_all(results: list[dict[str, Any]], summary: dict[str, Any], st, output: Path) -> None:
    """Writes every figure into ``output`` and the §6.4 numbers into ``summary``."""
    output = Path(output)
    plot_densities(results, st, output / "densities.png")
    plot_kl_vs_passes(summary, st, output / "kl_vs_passes.png")
    plot_posterior_trends(st, output / "posterior_trends.png")
    summary["non_identifiability"] = plot_non_identifiability(results, st, output / "non_identifiability.png")
