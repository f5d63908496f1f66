"""Probabilistic PCA trained by MAPA, with closed forms to check every number against.

The model, written as any Pyro user would (``x = W z + μ + ε``, ``z ~ N(0, I_d)``,
``ε ~ N(0, σ² I)``), is empiricalized by ``pyro_mapa.empiricalize`` with a linear encoder.
PPCA has closed forms for everything MAPA computes:

- the empiricalized log-likelihood :math:`\\sum_n \\log \\frac1N \\sum_i \\mathcal N(x_n; W g(x_i) + μ, σ^2 I)`
  (MAPA's bound at ``K = N``);
- the maximum-likelihood PPCA (Tipping and Bishop, 1999): from the sample covariance's
  eigen-decomposition, :math:`σ^2` the mean of the discarded eigenvalues and
  :math:`W = U_d (Λ_d - σ^2 I)^{1/2}`; its held-out marginal :math:`\\mathcal N(μ, W W^T + σ^2 I)`;
- the held-out marginal of MAPA's model with a KDE prior over its codes, a Gaussian mixture
  :math:`\\frac1N \\sum_i \\mathcal N(x; W z_i + μ, W H W^T + σ^2 I)`, against which the
  grid evaluator is checked.

A second model makes the noise scale a global latent (``σ ~ LogNormal``) with an
``AutoNormal`` guide beside the MAPA guide; its bound is checked against quadrature over σ
in the tests.

Run:  python examples/ppca.py [--epochs 300]      (about a minute on 2 CPU cores)
      python examples/ppca.py --smoke             (seconds; what the tests run)
"""

from __future__ import annotations

import argparse
import json
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn
from tqdm.auto import tqdm

from pyro_mapa import GaussianKernel, KDEPrior, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, empiricalize
from pyro_mapa.evaluation import PyroModelJoint, model_grid_log_likelihood


def make_data(n=400, data_dim=5, latent_dim=1, sigma=0.3, seed=0):
    """``n`` draws of a random PPCA; returns ``(x, truth)`` with truth ``W, mu, sigma``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g)
    mu = torch.randn(data_dim, generator=g)
    z = torch.randn(n, latent_dim, generator=g)
    x = z @ W.T + mu + sigma * torch.randn(n, data_dim, generator=g)
    return x, {"W": W, "mu": mu, "sigma": sigma}


def ppca(x, latent_dim=1, sigma=None):
    """PPCA as a Pyro model; ``W``, ``mu`` (and ``log_sigma`` unless ``sigma`` is given) are parameters."""
    d_x = x.shape[-1]
    W = pyro.param("W", lambda: 0.1 * torch.randn(d_x, latent_dim))
    mu = pyro.param("mu", lambda: torch.zeros(d_x))
    s = sigma if sigma is not None else pyro.param("log_sigma", lambda: torch.tensor(0.0)).exp()
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, s).to_event(1), obs=x)


def ppca_global_noise(x, latent_dim=1):
    """PPCA whose noise scale is a global latent variable: ``σ ~ LogNormal(-1, 0.5)``."""
    d_x = x.shape[-1]
    W = pyro.param("W", lambda: 0.1 * torch.randn(d_x, latent_dim))
    mu = pyro.param("mu", lambda: torch.zeros(d_x))
    s = pyro.sample("sigma", dist.LogNormal(-1.0, 0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, s).to_event(1), obs=x)


def empiricalized_log_likelihood(W, mu, sigma, codes, x):
    """Per-point :math:`\\log \\frac1N \\sum_i \\mathcal N(x_n; W z_i + μ, σ^2 I)` (float64)."""
    W, mu, codes, x = (t.double() for t in (W, mu, codes, x))
    comp = dist.Normal(codes @ W.T + mu, float(sigma)).log_prob(x.unsqueeze(1)).sum(-1)  # (n, N)
    return comp.logsumexp(-1) - math.log(codes.shape[0])


def kde_ppca_log_likelihood(W, mu, sigma, prior: KDEPrior, x):
    """Held-out marginal of PPCA with a KDE prior over its codes: a Gaussian mixture, closed form."""
    W, mu, x = W.double(), mu.double(), x.double()
    cov = W @ prior.kernel_cov.double() @ W.T + float(sigma) ** 2 * torch.eye(W.shape[0], dtype=torch.float64)
    comp = dist.MultivariateNormal(prior.codes.double() @ W.T + mu, cov).log_prob(x.unsqueeze(1))
    return comp.logsumexp(-1) - math.log(prior.codes.shape[0])


def mle_ppca(x, latent_dim):
    """Tipping and Bishop's closed-form maximum-likelihood PPCA: ``(W, mu, sigma)``."""
    x = x.double()
    mu = x.mean(0)
    cov = torch.cov(x.T, correction=0)
    lam, U = torch.linalg.eigh(cov)
    lam, U = lam.flip(0), U.flip(1)
    s2 = lam[latent_dim:].mean()
    W = U[:, :latent_dim] * (lam[:latent_dim] - s2).clamp_min(0).sqrt()
    return W, mu, s2.sqrt()


def ppca_marginal(W, mu, sigma, x):
    W, mu, x = W.double(), mu.double(), x.double()
    cov = W @ W.T + float(sigma) ** 2 * torch.eye(W.shape[0], dtype=torch.float64)
    return dist.MultivariateNormal(mu, cov).log_prob(x)


def train_mapa(model, x, latent_dim, epochs, batch_size, num_top, num_samples, bandwidth, seed):
    """MAPA on ``model`` empiricalized with a linear encoder; returns (empiricalized model, guide, history)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    encoder = nn.Linear(x.shape[-1], latent_dim)
    emp = empiricalize(lambda xb: model(xb, latent_dim), "z", encoder, x)
    table = PosteriorTable.from_data(x, GaussianKernel(bandwidth))
    guide = MAPAGuide(table, site="z")
    svi = SVI(emp, guide, Adam({"lr": 0.01}), TraceMAPA_ELBO(num_top=num_top, num_samples=num_samples))
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), desc="MAPA PPCA", leave=False):
        total = 0.0
        for rows in torch.randperm(len(x), generator=g).split(batch_size):
            total += svi.step(x[rows], rows=rows)
        history.append(total / len(x))
    return emp, guide, history


def run(n=400, data_dim=5, latent_dim=1, epochs=300, batch_size=100, num_top=10, num_samples=5, seed=0) -> dict:
    x, truth = make_data(2 * n, data_dim, latent_dim, seed=seed)
    x_train, x_test = x[:n], x[n:]
    emp, _, history = train_mapa(ppca, x_train, latent_dim, epochs, batch_size, num_top, num_samples, 0.3, seed)
    W, mu = pyro.param("W").detach(), pyro.param("mu").detach()
    sigma = float(pyro.param("log_sigma").detach().exp())
    with torch.no_grad():
        codes = emp.codes()
    prior = KDEPrior(codes)
    joint = PyroModelJoint(lambda xb: ppca(xb, latent_dim, sigma), "z", prior=prior)
    pad = 6 * float(codes.std())
    grid = model_grid_log_likelihood(joint, x_test, float(codes.min()) - pad, float(codes.max()) + pad, latent_dim=1, num_points=4001)
    closed = kde_ppca_log_likelihood(W, mu, sigma, prior, x_test)
    W_mle, mu_mle, s_mle = mle_ppca(x_train, latent_dim)
    return {
        "train_loss": history,
        "sigma": {"MAPA": sigma, "MLE": float(s_mle), "truth": truth["sigma"]},
        "test_loglik": {
            "MAPA (KDE prior), grid": float(grid.mean()),
            "MAPA (KDE prior), closed form": float(closed.mean()),
            "MLE PPCA": float(ppca_marginal(W_mle, mu_mle, s_mle, x_test).mean()),
            "true model": float(ppca_marginal(truth["W"], truth["mu"], truth["sigma"], x_test).mean()),
        },
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings (seconds), as in the tests")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args(argv)
    res = run(n=100, epochs=5) if args.smoke else run(epochs=args.epochs)
    print(f"noise scale: {res['sigma']}")
    for name, v in res["test_loglik"].items():
        print(f"held-out log p(x), {name}: {v:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
