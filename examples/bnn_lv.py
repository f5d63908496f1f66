"""BNN+LV, a Bayesian neural network with a latent input noise, fit by mean-field VI and by MAPA.

    OMP_NUM_THREADS=1 python examples/bnn_lv.py --draws 3 --out docs/results/bnn_lv.json
    python examples/bnn_lv.py --smoke          # tiny settings (what tests/examples/test_bnn_lv.py runs)

The model (Depeweg et al.'s BNN+LV; the non-identifiability studied by Yacoby, Pan and
Doshi-Velez, arXiv:1911.00569) is written once, as a plain Pyro model :func:`bnn_lv`:

.. math::
    W \\sim \\mathcal N(0, I), \\qquad z_n \\sim \\mathcal N(0, \\gamma^2), \\qquad
    y_n \\sim \\mathcal N(f_W(x_n, z_n), \\sigma^2),

with ``f_W`` a one-hidden-layer tanh network (``HIDDEN`` units) of the input ``x_n`` and the
1-D latent input noise ``z_n`` (site ``"z"``, inside ``pyro.plate("data")``); all weights
and biases of ``W`` are global latents with a standard normal prior, ``γ = 1`` is fixed and
the observation noise ``σ`` is a learned point estimate (``pyro.param("sigma")``).

Two ways to fit it, both full-batch, the same number of Adam steps:

(a) ``mean-field``: ``AutoNormal`` over ``W`` and every ``z_n``, ``Trace_ELBO``;
(b) ``MAPA``: ``pyro_mapa.empiricalize(bnn_lv, "z", encoder, data)`` replaces ``z_n`` by the
    code ``g_φ(x_c, y_c)`` of an index ``c``, the index posterior is the fixed kernel table
    on standardized ``[x, y]``, ``W`` gets an ``AutoNormal`` globals guide, trained with
    ``TraceMAPA_ELBO``.

Evaluation is against the exact ``p(y | x)`` of two toys (:data:`TOYS`): the test KL
``KL(p_true(y | x) || p_model(y | x))`` averaged over a midpoint grid of test ``x`` (the
average over the toy's uniform ``x``), with
``p_model(y | x) = E_{W ~ q} ∫ N(y; f_W(x, z), σ²) p(z) dz``: Monte Carlo over ``W`` draws
from the guide, the ``z`` integral by a quadrature on a uniform grid under ``p(z) =
N(0, γ²)`` (or, for MAPA's empiricalized prior, the exact average over the ``N`` learned
codes), and the ``y`` integral of the KL by trapezoid quadrature under each Gaussian
component of ``p_true`` (:func:`kl_to_truth`).

Not implemented: the BNN+LV paper's own mitigation (Yacoby, Pan and Doshi-Velez, "Mitigating
the Effects of Non-Identifiability on Inference for Bayesian Neural Networks with Latent
Variables", JMLR 2022, arXiv:1911.00569; docs/method.md §10.5). Its abstract says the authors
"develop a novel inference procedure that explicitly
mitigates the effects of likelihood non-identifiability during training"; the procedure
itself is not described there, so it is not built here and neither method below is it.
Both methods fit the same model; only the posterior over ``z_n`` (and hence how explanatory
power is shared between ``W`` and ``z_n``) differs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam
from torch import Tensor, nn
from tqdm import tqdm

from pyro_mapa import GaussianKernel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, empiricalize

__all__ = [
    "GAMMA",
    "HIDDEN",
    "TOYS",
    "Toy",
    "bnn_lv",
    "fit",
    "kl_to_truth",
    "network",
    "normal_grid",
    "predictive_log_density",
    "homoscedastic_reference",
    "main",
    "run",
]

HIDDEN = 50
GAMMA = 1.0
WEIGHT_SITES = ("w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class Toy:
    """A 1-D regression toy with an exact ``p(y | x)``, a mixture of Gaussians in ``y``.

    Attributes:
        name: Key in :data:`TOYS`.
        low, high: ``x ~ U[low, high]``.
        components: ``x -> (means, sds)``, each ``(..., C)``; mixture weights ``weights``.
        weights: ``(C,)`` mixture weights (sum 1).
    """

    name: str
    low: float
    high: float
    components: Callable[[Tensor], tuple[Tensor, Tensor]]
    weights: tuple[float, ...]

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` draws ``(x, y)``, each ``(n, 1)`` float32."""
        x = self.low + (self.high - self.low) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        means, sds = self.components(x)
        k = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), n, True, generator=generator)
        eps = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        y = means.gather(-1, k[:, None]) + sds.gather(-1, k[:, None]) * eps
        return x.float(), y.float()

    def test_x(self, n: int) -> Tensor:
        """Midpoints of ``n`` equal bins of ``[low, high]`` (float64): their mean is the ``x`` average."""
        return self.low + (self.high - self.low) * (torch.arange(n, dtype=torch.float64) + 0.5) / n

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p_true(y | x)``; ``x`` of shape ``(X, 1)`` broadcasts with ``y`` ``(X, Y)``."""
        means, sds = self.components(x)  # (X, C)
        logw = torch.log(torch.tensor(self.weights, dtype=y.dtype))
        comp = dist.Normal(means[:, None, :], sds[:, None, :]).log_prob(y[..., None])  # (X, Y, C)
        return torch.logsumexp(comp + logw, -1)


def _heteroscedastic(x: Tensor) -> tuple[Tensor, Tensor]:
    return 7 * torch.sin(x), 3 * torch.cos(x / 2).abs()


def _bimodal(x: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cat([10 * torch.sin(x), 10 * torch.cos(x)], -1), torch.ones_like(x).expand(*x.shape[:-1], 2)


TOYS = {
    # y = 7 sin x + 3 |cos(x / 2)| ε, x ~ U[-4, 4] (sd 0 at x = ±π: test x avoid those points).
    "heteroscedastic": Toy("heteroscedastic", -4.0, 4.0, _heteroscedastic, (1.0,)),
    # y = 10 sin x + ε or 10 cos x + ε with probability 1/2 each, x ~ U[-0.5, 2].
    "bimodal": Toy("bimodal", -0.5, 2.0, _bimodal, (0.5, 0.5)),
}


# -------------------------------------------------------------------------- the model
def network(weights: dict[str, Tensor], x: Tensor, z: Tensor) -> Tensor:
    """``f_W(x, z)``: ``x`` and ``z`` of shape ``(..., 1)``; weight batch dims broadcast on the left of ``...``.

    ``w1`` is ``batch + (H, 2)``, ``b1`` and ``w2`` ``batch + (H,)``, ``b2`` ``batch``; the
    result is ``(..., 1)`` with ``...`` the broadcast of the inputs' and weights' batch dims.
    """
    w1, b1, w2, b2 = (weights[k] for k in WEIGHT_SITES)
    h = torch.tanh(x * w1[..., 0] + z * w1[..., 1] + b1)
    return (h * w2).sum(-1, keepdim=True) + b2[..., None]


def bnn_lv(x: Tensor, y: Tensor | None = None) -> Tensor:
    """The BNN+LV model: ``x`` and ``y`` ``(N, 1)``; returns the means ``f_W(x_n, z_n)``."""
    weights = {
        "w1": pyro.sample("w1", dist.Normal(0.0, 1.0).expand([HIDDEN, 2]).to_event(2)),
        "b1": pyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1)),
        "w2": pyro.sample("w2", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1)),
        "b2": pyro.sample("b2", dist.Normal(0.0, 1.0)),
    }
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, GAMMA).expand([1]).to_event(1))
        mean = network(weights, x, z)
        pyro.sample("y", dist.Normal(mean, sigma).to_event(1), obs=y)
    return mean


# -------------------------------------------------------------------------- evaluation
def normal_grid(gamma: float, num: int, width: float = 8.0) -> tuple[Tensor, Tensor]:
    """Trapezoid nodes and log-weights for ``E_{N(0, γ²)}[g(z)]`` on ``[-width γ, width γ]`` (float64).

    The weights are normalized to sum to 1 (the mass outside is below 1e-14 for width 8).
    """
    u = torch.linspace(-width, width, num, dtype=torch.float64)
    logw = dist.Normal(0.0, 1.0).log_prob(u)
    logw[[0, -1]] -= math.log(2.0)
    return gamma * u, logw - torch.logsumexp(logw, 0)


def predictive_log_density(
    mean_fn: Callable[[Tensor, Tensor], Tensor],
    sigma: float,
    x: Tensor,
    y: Tensor,
    z_nodes: Tensor,
    z_logw: Tensor,
    chunk: int = 8,
) -> Tensor:
    """``log p_model(y | x) = log (1/M) Σ_m Σ_j w_j N(y; f_m(x, z_j), σ²)`` in float64.

    Arguments:
        mean_fn: ``(x (X, 1, 1), z (1, J, 1)) -> (M, X, J, 1)`` the means of ``M`` weight draws.
        sigma: Observation noise ``σ``.
        x: ``(X,)`` test inputs.
        y: ``(X, Y)`` outputs at which to evaluate, one row per ``x``.
        z_nodes, z_logw: ``(J,)`` quadrature nodes and log-weights of ``p(z)`` (log-weights sum to 0).
        chunk: Weight draws per block (memory ``O(chunk · X · J · Y)``).

    Returns:
        ``(X, Y)`` float64 log-densities.
    """
    with torch.no_grad():
        means = mean_fn(x.reshape(-1, 1, 1).float(), z_nodes.reshape(1, -1, 1).float())[..., 0].double()
        total = None
        for block in means.split(chunk):  # (m, X, J)
            r = (y[None, :, :, None] - block[:, :, None, :]) / sigma  # (m, X, Y, J)
            part = torch.logsumexp(torch.logsumexp(z_logw - 0.5 * r * r, -1), 0)
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(means.shape[0]) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def kl_to_truth(
    toy: Toy, x: Tensor, log_model: Callable[[Tensor], Tensor], num_y: int = 201, width: float = 8.0
) -> Tensor:
    """``KL(p_true(y | x) || p_model(y | x))`` at each ``x``, by quadrature under each true component.

    ``KL = Σ_c π_c ∫ N(y; μ_c, s_c²) [log p_true(y) − log p_model(y)] dy``, each integral by the
    trapezoid rule in ``u = (y − μ_c) / s_c`` on ``[−width, width]`` (normalized weights).

    Arguments:
        toy: Supplies ``p_true`` (:meth:`Toy.components`, :meth:`Toy.log_density`).
        x: ``(X,)`` float64 test inputs.
        log_model: ``y (X, Y) -> (X, Y)`` the model's log-density at those ``y``.
        num_y: Nodes per component.
        width: Half-width of each component's grid in its standard deviations.

    Returns:
        ``(X,)`` float64 KL divergences.
    """
    xs = x.reshape(-1, 1).double()
    means, sds = toy.components(xs)  # (X, C)
    u, logw = normal_grid(1.0, num_y, width)
    kl = torch.zeros(xs.shape[0], dtype=torch.float64)
    for c, pi in enumerate(toy.weights):
        y = means[:, c : c + 1] + sds[:, c : c + 1] * u  # (X, Y)
        diff = toy.log_density(xs, y) - log_model(y)
        kl = kl + pi * (logw.exp() * diff).sum(-1)
    return kl


# -------------------------------------------------------------------------- fitting
@dataclass
class Fit:
    """A fitted model: ``draw_weights(M)`` returns ``M`` stacked guide draws of ``W``."""

    draw_weights: Callable[[int], dict[str, Tensor]]
    sigma: float
    losses: list[float]
    codes: Tensor | None = None  # MAPA: the N learned codes g(x_i, y_i), the empiricalized prior's atoms


def _stack_draws(guide: Callable, args: tuple, kwargs: dict, num: int) -> dict[str, Tensor]:
    with torch.no_grad(), poutine.block():
        draws = [guide(*args, **kwargs) for _ in range(num)]
    return {k: torch.stack([d[k] for d in draws]) for k in WEIGHT_SITES}


def fit(
    method: str, x: Tensor, y: Tensor, *, steps: int, lr: float, seed: int, num_top: int = 10,
    num_samples: int = 10, bandwidth: float = 0.2, progress: bool = False,
) -> Fit:
    """Fits :func:`bnn_lv` to ``(x, y)`` by ``method`` (``"mean-field"`` or ``"MAPA"``), full-batch.

    For MAPA the table and the encoder's inputs are ``[x, y]`` standardized per column;
    ``bandwidth`` is the Gaussian kernel's ``h`` in those units.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    args: tuple = (x, y)
    kwargs: dict = {}
    codes_of: Callable[[], Tensor] | None = None
    if method == "mean-field":
        model, guide = bnn_lv, AutoNormal(bnn_lv, init_scale=0.01)
        loss, weights_guide = Trace_ELBO(), guide
    elif method == "MAPA":
        feats = torch.cat([x, y], 1)
        feats = (feats - feats.mean(0)) / feats.std(0)
        encoder = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
        model = empiricalize(bnn_lv, "z", encoder, feats)
        weights_guide = AutoNormal(poutine.block(model, hide=["z"]), init_scale=0.01)
        guide = MAPAGuide(PosteriorTable.from_data(feats, GaussianKernel(bandwidth)), site="z",
                          globals_guide=weights_guide)
        loss = TraceMAPA_ELBO(num_top=num_top, num_samples=num_samples, rng_seed=seed)
        kwargs = {"rows": torch.arange(x.shape[0])}
        codes_of = lambda: model.codes().detach()[:, 0]  # noqa: E731
    else:
        raise ValueError(f"method must be 'mean-field' or 'MAPA', got {method!r}")
    svi = SVI(model, guide, Adam({"lr": lr}), loss)
    losses = [svi.step(*args, **kwargs) / x.shape[0] for _ in tqdm(range(steps), desc=method, leave=False,
                                                                     disable=not progress)]
    return Fit(lambda m: _stack_draws(weights_guide, args, kwargs, m), pyro.param("sigma").item(), losses,
               None if codes_of is None else codes_of())


def evaluate(toy: Toy, result: Fit, *, num_x: int, num_draws: int, num_z: int, num_y: int,
             prior: str = "normal") -> dict:
    """Test KL of a fit, and a resolution check (``num_z`` and ``num_y`` doubled).

    ``prior``: ``"normal"`` integrates ``z`` under ``N(0, γ²)``; ``"codes"`` averages over
    MAPA's ``N`` learned codes (the empiricalized model's own prior).
    """
    draws = result.draw_weights(num_draws)
    mean_fn = lambda xx, zz: network({k: v[:, None, None] for k, v in draws.items()}, xx, zz)  # noqa: E731
    x = toy.test_x(num_x)

    def kl(nz: int, ny: int) -> Tensor:
        if prior == "codes":
            nodes = result.codes.double()
            logw = torch.full_like(nodes, -math.log(nodes.shape[0]))
        else:
            nodes, logw = normal_grid(GAMMA, nz)
        lm = lambda y: predictive_log_density(mean_fn, result.sigma, x, y, nodes, logw)  # noqa: E731
        return kl_to_truth(toy, x, lm, num_y=ny)

    per_x = kl(num_z, num_y)
    fine = kl(2 * num_z - 1, 2 * num_y - 1)
    return {"test_kl": per_x.mean().item(), "quadrature_change": (fine.mean() - per_x.mean()).abs().item()}


def homoscedastic_reference(toy: Toy, num_x: int, num_y: int) -> float:
    """Test KL of the best model without ``z``: ``y ~ N(m(x), σ²)``, true mean ``m(x)``, one best ``σ``.

    Over Gaussians ``N(m(x), σ²)`` with a constant ``σ`` the average KL is minimized by the
    true mean and ``σ² =`` the average over test ``x`` of the true variance ``v(x)``. A fit
    whose test KL is above this did not get any use out of its latent ``z``.
    """
    x = toy.test_x(num_x).reshape(-1, 1)
    means, sds = toy.components(x)
    w = torch.tensor(toy.weights, dtype=torch.float64)
    m = (w * means).sum(-1, keepdim=True)
    v = (w * (sds**2 + means**2)).sum(-1, keepdim=True) - m**2
    sigma = v.mean().sqrt()
    return kl_to_truth(toy, x[:, 0], lambda y: dist.Normal(m, sigma).log_prob(y), num_y=num_y).mean().item()


SETTINGS = {
    "real": dict(num_train=500, steps=3000, lr=0.01, num_x=50, num_draws=100, num_z=101, num_y=41),
    "smoke": dict(num_train=60, steps=150, lr=0.02, num_x=8, num_draws=10, num_z=101, num_y=41),
}


def run(toy_name: str, method: str, seed: int, settings: dict) -> dict:
    """One fit and its evaluation; a JSON-ready dict."""
    toy = TOYS[toy_name]
    x, y = toy.sample(settings["num_train"], torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    result = fit(method, x, y, steps=settings["steps"], lr=settings["lr"], seed=seed)
    fit_s = time.perf_counter() - t0
    ev = {k: settings[k] for k in ("num_x", "num_draws", "num_z", "num_y")}
    out = {"toy": toy_name, "method": method, "seed": seed, "sigma": result.sigma, "fit_s": fit_s,
           "loss_first": sum(result.losses[:10]) / 10, "loss_last": sum(result.losses[-10:]) / 10}
    torch.manual_seed(seed)
    out["normal_prior"] = evaluate(toy, result, **ev)
    if result.codes is not None:
        out["codes_prior"] = evaluate(toy, result, **ev, prior="codes")
        out["code_mean"], out["code_sd"] = result.codes.mean().item(), result.codes.std().item()
    return out


def summarize(rows: list[dict]) -> list[tuple[str, str, str, float, float, int]]:
    """``(toy, method, prior, mean KL, sd KL, draws)`` for each group of seeds."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        for prior in ("normal_prior", "codes_prior"):
            if prior in r:
                groups.setdefault((r["toy"], r["method"], prior), []).append(r[prior]["test_kl"])
    out = []
    for (toy, method, prior), v in groups.items():
        t = torch.tensor(v, dtype=torch.float64)
        out.append((toy, method, prior, t.mean().item(), t.std().item() if len(v) > 1 else 0.0, len(v)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=3, help="data/initialization seeds 0..draws-1")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--toys", nargs="+", default=list(TOYS), choices=list(TOYS))
    args = parser.parse_args(argv)
    settings = SETTINGS["smoke" if args.smoke else "real"]
    t0 = time.perf_counter()
    jobs = [(t, m, s) for t in args.toys for s in range(args.draws) for m in ("mean-field", "MAPA")]
    rows = [run(t, m, s, settings) for t, m, s in tqdm(jobs, desc="fits")]
    summary = summarize(rows)
    reference = {t: homoscedastic_reference(TOYS[t], settings["num_x"], settings["num_y"]) for t in args.toys}
    print(f"{'toy':16s} {'method':11s} {'p(z) at test':14s} {'test KL (mean ± sd)':>22s}")
    for toy, method, prior, mean, sd, n in summary:
        label = "N(0, γ²)" if prior == "normal_prior" else "learned codes"
        print(f"{toy:16s} {method:11s} {label:14s} {mean:12.3f} ± {sd:6.3f}  (n={n})")
    for toy, kl in reference.items():
        print(f"{toy:16s} {'no z (ref.)':11s} {'-':14s} {kl:12.3f}")
    report = {
        "command": "python examples/bnn_lv.py" + (" --smoke" if args.smoke else "") + f" --draws {args.draws}",
        "settings": settings, "hidden": HIDDEN, "gamma": GAMMA,
        "mapa": {"num_top": 10, "num_samples": 10, "bandwidth": 0.2, "features": "standardized [x, y]"},
        "runtime_s": time.perf_counter() - t0, "torch": torch.__version__, "pyro": pyro.__version__,
        "machine": platform.machine(),
        "no_z_reference_kl": reference,
        "summary": [dict(zip(("toy", "method", "prior", "kl_mean", "kl_sd", "draws"), s)) for s in summary],
        "runs": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
