# %% [markdown]
# # Quick start: MAPA, a VAE and an IWAE on figure-8
#
# The same decoder trained three ways; switching is a change of guide and loss.
# Run as a script (`python tutorials/quick_start.py`); with `CI` set in the
# environment it runs a few epochs only (smoke mode).

# %%
import os

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_mapa import (
    AmortizedCodebook,
    GaussianKernel,
    MAPAGuide,
    MeanFieldGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceIWAE_ELBO,
    TraceMAPA_ELBO,
    VAEModel,
    mlp,
)
from pyro_mapa.datasets import load_dataset
from pyro_mapa import LearnedModel
from pyro_mapa.priors import GaussianCopulaPrior

smoke_test = "CI" in os.environ
epochs = 3 if smoke_test else 200
pyro.set_rng_seed(0)
ds = load_dataset("figure8", num_train=1000, num_valid=10, num_test=500 if smoke_test else 2000)
X, sigma = ds.train, ds.sigma

# %% [markdown]
# ## MAPA: an ordinary Pyro model over an empiricalized prior, and a fixed guide

# %%
encoder, decoder = mlp(2, 1), mlp(1, 2)
codebook = AmortizedCodebook(encoder, decoder, X)


def model(batch_idx=None):
    pyro.module("codebook", codebook)
    with pyro.plate("data", len(X), subsample=batch_idx) as idx:
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(len(X))))
        pyro.sample("x", dist.Normal(codebook(c), sigma).to_event(1), obs=X[idx])


table = PosteriorTable.from_data(X, GaussianKernel(bandwidth=sigma))
guide = MAPAGuide(table, site="c", plate="data")
svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=TraceMAPA_ELBO(num_top=5, num_samples=5))
for epoch in range(epochs):
    for batch_idx in torch.randperm(len(X)).split(100):
        loss = svi.step(batch_idx)
print(f"MAPA final minibatch loss per point: {loss / len(X):.3f}")

# Prior recovery (1-D Gaussian copula) turns it into an ordinary generative model.
with torch.no_grad():
    mapa = LearnedModel(decoder, NormalLikelihood(sigma), GaussianCopulaPrior(codebook.codes()))

# %% [markdown]
# ## The VAE and the IWAE: the same decoder architecture, a mean-field guide, another loss

# %%
results = {"MAPA": mapa}
for name, loss_fn in [("VAE", Trace_ELBO()), ("IWAE", TraceIWAE_ELBO(10))]:
    pyro.clear_param_store()
    dec, enc = mlp(1, 2), mlp(2, 2)
    vae_model = VAEModel(dec, X, 1, NormalLikelihood(sigma))
    vae_guide = MeanFieldGuide(enc, X, 1)
    svi = SVI(vae_model, vae_guide, Adam({"lr": 1e-3}), loss=loss_fn)
    for epoch in range(epochs):
        for batch_idx in torch.randperm(len(X)).split(100):
            svi.step(batch_idx)
    results[name] = LearnedModel(dec, NormalLikelihood(sigma))

# %% [markdown]
# ## Exact test log-likelihoods (quadrature over the 1-D latent) and new samples

# %%
true_ll = float(ds.true_log_prob(ds.test).mean())
for name, learned in results.items():
    ll = float(learned.log_prob(ds.test).mean())
    print(f"{name:5s} test LL {ll:8.3f}   KL to the truth {true_ll - ll:6.3f}")
samples = {name: learned.sample(500) for name, learned in results.items()}
assert all(s.shape == (500, 2) for s in samples.values())

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

panels = [("test data", ds.test[:500])] + [(f"{name} samples", s) for name, s in samples.items()]
# One box around every point, drawn with equal units on both axes (x1 and x2 are the same quantity).
everything = torch.cat([points.float() for _, points in panels])
low, high = everything.min(0).values, everything.max(0).values
low, high = low - 0.05 * (high - low), high + 0.05 * (high - low)
ratio = float((high[1] - low[1]) / (high[0] - low[0]))
fig, axes = plt.subplots(1, 4, figsize=(12, 3 * ratio + 1.3), sharex=True, sharey=True)
for ax, (title, points) in zip(axes, panels):
    ax.scatter(points[:, 0], points[:, 1], s=2)
    ax.set(title=title, xlabel="$x_1$", xlim=(float(low[0]), float(high[0])), ylim=(float(low[1]), float(high[1])))
    ax.set_aspect("equal")
axes[0].set_ylabel("$x_2$")
fig.tight_layout()
fig.savefig("quick_start_samples.png", dpi=90)
