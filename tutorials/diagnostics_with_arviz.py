# %% [markdown]
# # Diagnostics with ArviZ
#
# After fitting, can the inference be trusted? This tutorial trains MAPA and a VAE on
# the circle data set and answers, with ArviZ:
#
# - `to_inference_data`: draws, pointwise log-likelihood and log importance weights as
#   ArviZ data; `az.loo` on it;
# - is the fixed MAPA table a good proposal for the model that was learned?
#   (`index_posterior`, `proposal_quality`);
# - is an importance-sampled log-likelihood reliable? (Pareto k̂ and Kish ESS);
# - training traces.

# %%
import math
import os
import warnings

import arviz as az
import matplotlib

matplotlib.use("Agg")
import pyro

from pyro_mapa import to_inference_data
from pyro_mapa.experiments.datasets import load_dataset
from pyro_mapa.diagnostics import TrainingTrace, importance_diagnostics, index_posterior, proposal_quality
from pyro_mapa.experiments.methods import build_method
from pyro_mapa.table.posterior_table import PosteriorTable
from pyro_mapa.training import fit

warnings.filterwarnings("ignore", category=FutureWarning)
smoke_test = "CI" in os.environ
epochs = 4 if smoke_test else 200
ds = load_dataset("circle", num_train=500, num_valid=300, num_test=300, seed=1)

# %% [markdown]
# ## Train MAPA, recording the loss and the validation log-likelihood

# %%
pyro.clear_param_store()
mapa = build_method("MAPA", ds.train, ds.likelihood, seed=0)
trace = TrainingTrace(valid_ll=lambda: float(mapa.learned_model().log_prob(ds.valid, 1001).mean()),
                      every=max(1, epochs // 10))
fit(mapa.model, mapa.guide, mapa.loss, len(ds.train), epochs=epochs, progress=not smoke_test, callback=trace)
print(trace.to_dataframe().tail())
trace.plot().savefig("diagnostics_training_trace.png", dpi=90)

# %% [markdown]
# ## ArviZ data and PSIS-LOO
#
# `posterior["c"]` holds the drawn index of each observation, `posterior["code"]` its
# code; `log_likelihood["x"]` is log p(x_n | code) per draw, so `az.loo` works.

# %%
idata = to_inference_data(mapa.model, mapa.guide, None, num_draws=100)
print(idata)
loo = az.loo(idata)
print(loo)
assert math.isfinite(loo.elpd_loo)

# %% [markdown]
# ## Is MAPA a good proposal for the model we learned?
#
# The learned empiricalized model has an exact posterior over indices (Eq. 7). We compare
# the fixed table with it: KL and total variation per point, the share of the posterior
# mass inside MAPA's top-K (the part the bound sums exactly), and the Kish ESS per draw of
# the remainder's importance weights (1 = perfect proposal).

# %%
log_post = index_posterior(mapa.model.codebook, mapa.likelihood)
quality = proposal_quality(mapa.guide.table, log_post, num_top=5)
naive = proposal_quality(PosteriorTable.uniform(len(ds.train)), log_post, num_top=5)
print("MAPA      ", {k: round(v, 3) for k, v in quality.summary().items()})
print("MAPA-naive", {k: round(v, 3) for k, v in naive.summary().items()})
quality.plot().savefig("diagnostics_proposal_quality.png", dpi=90)
assert quality.top_k_mass.mean() > naive.top_k_mass.mean()

# %% [markdown]
# ## Is an importance-sampled log-likelihood reliable?
#
# For a VAE, log p(x) is estimated by importance sampling with the guide. Pareto k̂
# below 0.5 means finite-variance weights (reliable); above about 0.7 the estimate is
# unreliable. The Kish ESS says how many draws effectively count. For MAPA's discrete
# weights over a few distinct indices k̂ is degenerate: it is reported as NaN (flagged
# "not meaningful"), with the ESS still given.

# %%
pyro.clear_param_store()
vae = build_method("VAE", ds.train, ds.likelihood, seed=0)
fit(vae.model, vae.guide, vae.loss, len(ds.train), epochs=epochs, progress=not smoke_test)
vae_idata = to_inference_data(vae.model, vae.guide, None, num_draws=200)
d_vae = importance_diagnostics(vae_idata.sample_stats["log_weight"].values[0].T)
d_mapa = importance_diagnostics(idata.sample_stats["log_weight"].values[0].T)
print("VAE  weights:", {k: round(v, 3) for k, v in d_vae.summary().items()})
print("MAPA weights:", {k: round(v, 3) for k, v in d_mapa.summary().items()})
assert d_vae.meaningful.any()
