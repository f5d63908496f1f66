"""examples/bnn_lv.py: its exact evaluation (KL routine, predictive quadrature) and a smoke run of both fits."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from scipy import integrate, stats

_PATH = Path(__file__).resolve().parents[2] / "examples" / "bnn_lv.py"


def _load():
    spec = importlib.util.spec_from_file_location("bnn_lv_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


B = _load()


def _normal_logpdf(y, mean, sd):
    sd = torch.as_tensor(sd, dtype=torch.float64)
    return -0.5 * ((y - mean) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("name", ["heteroscedastic", "bimodal"])
def test_kl_is_zero_when_the_model_is_the_truth(name):
    toy = B.TOYS[name]
    x = toy.test_x(20)
    kl = B.kl_to_truth(toy, x, lambda y: toy.log_density(x.reshape(-1, 1), y))
    assert kl.abs().max().item() < 1e-13


def test_kl_matches_the_closed_form_between_gaussians():
    toy = B.TOYS["heteroscedastic"]
    x = toy.test_x(30)  # includes sds down to ~0.1 near x = ±π
    shift, sd_model = 0.7, 2.5
    log_model = lambda y: _normal_logpdf(y, 7 * torch.sin(x)[:, None] + shift, sd_model)  # noqa: E731
    kl = B.kl_to_truth(toy, x, log_model)
    s = 3 * torch.cos(x / 2).abs()
    exact = math.log(sd_model) - torch.log(s) + (s**2 + shift**2) / (2 * sd_model**2) - 0.5
    torch.testing.assert_close(kl, exact, rtol=0, atol=1e-10)


def test_kl_of_the_bimodal_truth_matches_scipy_quad():
    """KL(½N(10 sin x, 1) + ½N(10 cos x, 1) || N(m, 4²)), reference by adaptive quadrature in float64."""
    toy = B.TOYS["bimodal"]
    x = toy.test_x(5)
    m = torch.full_like(x, 2.0)
    kl = B.kl_to_truth(toy, x, lambda y: _normal_logpdf(y, m[:, None], 4.0))
    for i, xi in enumerate(x.tolist()):
        def integrand(y, xi=xi):
            p = 0.5 * stats.norm.pdf(y, 10 * math.sin(xi), 1) + 0.5 * stats.norm.pdf(y, 10 * math.cos(xi), 1)
            return p * (math.log(p) - stats.norm.logpdf(y, 2.0, 4.0)) if p > 0 else 0.0
        ref, _ = integrate.quad(integrand, -25, 25, points=[10 * math.sin(xi), 10 * math.cos(xi)], limit=200,
                                epsabs=1e-13, epsrel=1e-12)
        assert abs(kl[i].item() - ref) < 1e-9, (xi, kl[i].item(), ref)


@pytest.mark.parametrize("gamma", [1.0, 1.7])
def test_predictive_density_matches_a_linear_network_in_closed_form(gamma):
    """f_m(x, z) = a_m x + b_m z + c_m: p(y | x) = (1/M) Σ_m N(a_m x + c_m, b_m² γ² + σ²) exactly."""
    a, b, c = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.5, -1.5]), torch.tensor([0.0, 1.0, -2.0])
    sigma = 0.4

    def mean_fn(x, z):
        return (a[:, None, None, None] * x + b[:, None, None, None] * z + c[:, None, None, None])

    x = torch.linspace(-2, 2, 7, dtype=torch.float64)
    y = torch.linspace(-12, 12, 50, dtype=torch.float64).expand(7, 50)
    nodes, logw = B.normal_grid(gamma, 401)
    got = B.predictive_log_density(mean_fn, sigma, x, y, nodes, logw, chunk=2)
    sd = torch.sqrt(b.double() ** 2 * gamma**2 + sigma**2)
    means = a.double()[:, None, None] * x[:, None] + c.double()[:, None, None]
    comp = _normal_logpdf(y[None], means, sd[:, None, None])
    exact = torch.logsumexp(comp, 0) - math.log(3)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-6)


def test_homoscedastic_reference_is_the_closed_form_for_the_heteroscedastic_toy():
    toy = B.TOYS["heteroscedastic"]
    x = toy.test_x(40)
    s2 = 9 * torch.cos(x / 2) ** 2
    sigma2 = s2.mean()
    exact = (0.5 * torch.log(sigma2 / s2) + s2 / (2 * sigma2) - 0.5).mean().item()
    assert abs(B.homoscedastic_reference(toy, 40, 201) - exact) < 1e-10


def test_mapa_fit_trains_and_its_predictive_density_integrates_to_one():
    settings = B.SETTINGS["smoke"]
    toy = B.TOYS["heteroscedastic"]
    x, y = toy.sample(settings["num_train"], torch.Generator().manual_seed(0))
    fit = B.fit("MAPA", x, y, steps=settings["steps"], lr=settings["lr"], seed=0)
    first, last = sum(fit.losses[:10]) / 10, sum(fit.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert fit.codes.shape == (settings["num_train"],)
    draws = fit.draw_weights(5)
    assert draws["w1"].shape == (5, B.HIDDEN, 2) and not torch.equal(draws["w1"][0], draws["w1"][1])
    mean_fn = lambda xx, zz: B.network({k: v[:, None, None] for k, v in draws.items()}, xx, zz)  # noqa: E731
    xt = toy.test_x(4)
    y_grid = torch.linspace(-100, 100, 20001, dtype=torch.float64).expand(4, -1)
    for nodes, logw in (B.normal_grid(B.GAMMA, 201),
                        (fit.codes.double(), torch.full((len(fit.codes),), -math.log(len(fit.codes)),
                                                        dtype=torch.float64))):
        dens = B.predictive_log_density(mean_fn, fit.sigma, xt, y_grid, nodes, logw).exp()
        mass = torch.trapezoid(dens, y_grid[0], dim=-1)
        torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-3)


def test_smoke_run_writes_both_methods(tmp_path):
    out = tmp_path / "bnn.json"
    report = B.main(["--smoke", "--draws", "1", "--toys", "bimodal", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == report["summary"]
    methods = {(r["method"], r["toy"]) for r in report["runs"]}
    assert methods == {("mean-field", "bimodal"), ("MAPA", "bimodal")}
    for r in report["runs"]:
        assert r["loss_last"] < r["loss_first"]
        for key in ("normal_prior", "codes_prior"):
            if key in r:
                assert math.isfinite(r[key]["test_kl"]) and r[key]["test_kl"] > 0
                assert r[key]["quadrature_change"] < 1e-3
    assert "codes_prior" in next(r for r in report["runs"] if r["method"] == "MAPA")
    assert report["no_z_reference_kl"]["bimodal"] > 0
