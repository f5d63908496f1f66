"""Pyro's tutorial VAE, unchanged, trained two ways: its own guide with Trace_ELBO, and MAPA.

The model and guide below are written the way Pyro's VAE tutorial writes them
(``Encoder``/``Decoder`` modules, a plate of the minibatch's size, latent site
``"latent"``, Bernoulli site ``"obs"``). MAPA trains *the same model function*:
``pyro_mapa.empiricalize`` turns its ``"latent"`` site into MAPA's index site plus the code
``encoder(x_index)``, without a change to the model's source. After training, a prior is
recovered from MAPA's codes (a KDE), put in place of the site's prior in the original
model (``PyroModelJoint(..., prior=...)``), and both models' held-out log-likelihoods are
computed exactly by grid quadrature (``d = 2``) and by importance sampling, whose Pareto
k̂ says whether that estimate can be trusted.

Data: scikit-learn's 8×8 digits (1,797 images, shipped with scikit-learn, no download),
binarized at 8 of 16 grey levels.

Run:  python examples/pyro_tutorial_vae.py                 (real settings, a few minutes on 2 CPU cores)
      python examples/pyro_tutorial_vae.py --smoke         (seconds; what the tests run)
"""

from __future__ import annotations

import argparse
import json
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from tqdm.auto import tqdm

from pyro_mapa import BernoulliKernel, KDEPrior, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, empiricalize
from pyro_mapa.diagnostics import importance_diagnostics
from pyro_mapa.evaluation import PyroModelJoint, model_grid_log_likelihood, model_importance_log_likelihood


# ----------------------------------------------------------------- as in Pyro's VAE tutorial
class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class VAE(nn.Module):
    def __init__(self, z_dim=2, hidden_dim=200, x_dim=64):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, x_dim)
        self.decoder = Decoder(z_dim, hidden_dim, x_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# ----------------------------------------------------------------- MAPA's code encoder
class CodeEncoder(nn.Module):
    """``g_φ``: one code per image (the tutorial encoder's mean head alone)."""

    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, z_dim))

    def forward(self, x):
        return self.net(x)


def load_binarized_digits(seed: int = 0):
    """Train/test splits of the 8×8 digits, pixels > 7 of 16 set to 1."""
    from sklearn.datasets import load_digits

    x = (torch.tensor(load_digits().data, dtype=torch.float32) > 7).float()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[:1400]], x[perm[1400:]]


def train(svi, x, epochs, batch_size, seed, use_rows, desc):
    """Minibatch SVI; returns the mean loss per point of each epoch."""
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        total = 0.0
        for rows in torch.randperm(len(x), generator=g).split(batch_size):
            total += svi.step(x[rows], rows=rows) if use_rows else svi.step(x[rows])
        history.append(total / len(x))
    return history


def evaluate(model, prior, x, low, high, num_samples, fit_steps, grid_points):
    """Exact (grid) and importance-sampled held-out log-likelihood per point, with Pareto k̂."""
    joint = PyroModelJoint(model, "latent", prior=prior)
    with torch.no_grad():
        exact = model_grid_log_likelihood(joint, x, low, high, latent_dim=2, num_points=grid_points)
    samples = None if prior is None else prior.sample(torch.Size([2000]))  # the proposal starts at the prior
    est = model_importance_log_likelihood(
        joint, x, 2, num_samples=num_samples, fit_steps=fit_steps, prior_samples=samples
    )
    diag = importance_diagnostics(est.log_weights)
    return {
        "exact": float(exact.mean()),
        "importance": float(est.log_px.mean()),
        "importance_se": float(est.stderr.pow(2).sum().sqrt() / len(x)),
        "max_pareto_k": float(diag.pareto_k.max()),
        "median_pareto_k": float(torch.as_tensor(diag.pareto_k).median()),
        "share_pareto_k_above_0.7": float((torch.as_tensor(diag.pareto_k) > 0.7).double().mean()),
    }


def run(epochs=60, batch_size=100, num_train=None, num_test=None, num_top=5, num_samples=5, rho=0.9,
        is_samples=500, fit_steps=500, grid_points=201, seed=0) -> dict:
    x_train, x_test = load_binarized_digits(seed)
    x_train, x_test = x_train[:num_train], x_test[:num_test]
    out = {}

    # (a) the tutorial's own guide and Trace_ELBO
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    hist = train(svi, x_train, epochs, batch_size, seed, False, "VAE")
    vae.eval()
    out["VAE"] = {"train_loss": hist, **evaluate(vae.model, None, x_test, -7.0, 7.0, is_samples, fit_steps, grid_points)}

    # (b) the same model function, empiricalized, trained by MAPA
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae_m = VAE()
    encoder = CodeEncoder(2, 200, 64)
    model = empiricalize(vae_m.model, "latent", encoder, x_train)
    guide = MAPAGuide(PosteriorTable.from_data(x_train, BernoulliKernel(rho)), site="latent")
    svi = SVI(model, guide, Adam({"lr": 1e-3}), TraceMAPA_ELBO(num_top=num_top, num_samples=num_samples))
    hist = train(svi, x_train, epochs, batch_size, seed, True, "MAPA")
    with torch.no_grad():
        codes = model.codes()
    prior = KDEPrior(codes)
    low = (codes.min(0).values - 4 * codes.std(0)).tolist()
    high = (codes.max(0).values + 4 * codes.std(0)).tolist()
    out["MAPA"] = {
        "train_loss": hist,
        "encoder_passes": model.encoder_passes,
        **evaluate(vae_m.model, prior, x_test, low, high, is_samples, fit_steps, grid_points),
    }
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings (seconds), as in the tests")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args(argv)
    settings = (
        dict(epochs=3, num_train=200, num_test=20, is_samples=200, fit_steps=100, grid_points=101)
        if args.smoke
        else dict(epochs=args.epochs)
    )
    res = run(**settings)
    for name, r in res.items():
        print(
            f"{name:5s} held-out log p(x): exact {r['exact']:.3f}, importance {r['importance']:.3f} "
            f"± {r['importance_se']:.3f} (Pareto k median {r['median_pareto_k']:.2f}, max {r['max_pareto_k']:.2f})"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "results": res}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
