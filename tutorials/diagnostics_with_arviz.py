# %% [markdown]
# # Diagnostics with ArviZ
#
# After fitting, can the models be trusted, and which one is best? This tutorial trains
# MAPA, an IWAE and a VAE on the circle data set (1-D latent) and answers, with ArviZ:
#
# - *Which model predicts held-out data best?* `compare`: the pointwise log p(x_n) of the
#   same test points under each model, as ArviZ ELPD data, ranked by `az.compare` with the
#   standard error of each difference (`az.plot_compare`);
# - *Is an importance-sampled log-likelihood trustworthy?* PSIS k̂ per point (`az.plot_khat`)
#   and Kish ESS; for MAPA also the table's quality as a proposal;
# - *Does the model generate the data?* posterior predictive draws from the learned model
#   beside the data (`az.plot_ppc`), and the aggregate posterior of the codes against the prior;
# - why `az.loo` is not the tool for models with one latent per data point;
# - training traces.
#
# The plotting calls are ArviZ 0.x's (`az.plot_ppc` is `az.plot_ppc_dist` in ArviZ 1.x).

# %%
import itertools
import math
import os
import time
import warnings

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro

from pyro_mapa.diagnostics import TrainingTrace, importance_diagnostics, index_posterior, proposal_quality
from pyro_mapa.diagnostics.compare import compare
from pyro_mapa.diagnostics.inference_data import aggregate_posterior, to_inference_data
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.table.posterior_table import PosteriorTable
from pyro_mapa.training import fit

warnings.filterwarnings("ignore", category=FutureWarning)
smoke_test = "CI" in os.environ
epochs = 4 if smoke_test else 200
fit_steps, num_samples, num_draws = (50, 100, 25) if smoke_test else (2000, 1000, 100)
ds = load_dataset("circle", num_train=500, num_valid=300, num_test=100 if smoke_test else 500, seed=1)
start = time.perf_counter()

# %% [markdown]
# ## Train MAPA (recording the loss and the validation log-likelihood), an IWAE and a VAE

# %%
pyro.clear_param_store()
mapa = build_method("MAPA", ds.train, ds.likelihood, seed=0)
trace = TrainingTrace(valid_ll=lambda: float(mapa.learned_model().log_prob(ds.valid, 1001).mean()),
                      every=max(1, epochs // 10))
fit(mapa.model, mapa.guide, mapa.loss, len(ds.train), epochs=epochs, progress=not smoke_test, callback=trace)
print(trace.to_dataframe().tail())
trace.plot().savefig("diagnostics_training_trace.png", dpi=90)

setups = {"MAPA": mapa}
for name in ("IWAE", "VAE"):
    pyro.clear_param_store()
    setups[name] = build_method(name, ds.train, ds.likelihood, seed=0)
    fit(setups[name].model, setups[name].guide, setups[name].loss, len(ds.train), epochs=epochs,
        progress=not smoke_test)

# %% [markdown]
# ## Which model predicts held-out data best?
#
# The decoder's weights are point estimates and each data point has its own latent, so the
# predictive density of a new point is the marginal log p(x_n) = log ∫ p(x_n | z) p(z) dz
# under the learned model (for MAPA, the decoder with the prior recovered from its codes).
# With a 1-D latent it is exact by quadrature. `compare` hands the pointwise values to
# `az.compare` (elpd = Σ_n log p(x_n), SE = sqrt(n Var_n), p = 0 since the points are held
# out); `dse` is the standard error of each model's difference from the best, from the
# paired pointwise differences.

# %%
exact = compare(setups, ds.test)
print(exact.table[["rank", "elpd_loo", "elpd_diff", "se", "dse", "weight", "method"]].round(2))
print(f"true model: elpd = {float(ds.true_log_prob(ds.test).double().sum()):.1f}")
ax = az.plot_compare(exact.table, order_by_rank=False)  # the table is already ordered
ax.set_xlabel(f"elpd on {len(ds.test)} held-out points (sum of log p(x), higher is better)")
ax.figure.tight_layout()
ax.figure.savefig("diagnostics_compare.png", dpi=90)

# %% [markdown]
# ## The same comparison by importance sampling, as for a latent of dimension > 2
#
# Above two latent dimensions there is no quadrature: `compare` fits an amortized mixture
# proposal to each learned model and importance-samples log p(x_n) (here forced with
# `method="importance"`, to check it against the exact values). Each point then has a
# Monte-Carlo error (`mc_se` sums them) and the PSIS k̂ of its weights (Yao et al. 2018):
# below 0.5 fine, above ArviZ's threshold (about 0.7) that point's estimate is unreliable.

# %%
sampled = compare(setups, ds.test, method="importance", num_samples=num_samples, fit_steps=fit_steps)
for name in setups:
    pw, ex = sampled.pointwise[name], exact.pointwise[name]
    k = pw.diagnostics.summary()
    print(f"{name:5s} exact {float(ex.log_px.sum()):9.1f}   sampled {float(pw.log_px.sum()):9.1f}"
          f" ± {pw.mc_se:.1f} (MC)   k̂ median {k['pareto_k_median']:.2f}, max {k['pareto_k_max']:.2f},"
          f" share > {k['k_threshold']:.2f}: {k['share_k_above_threshold']:.3f}   ESS median {k['ess_median']:.0f}")
print("ranking exact:", exact.ranking, " sampled:", sampled.ranking)
worst = max(setups, key=lambda m: sampled.pointwise[m].diagnostics.summary()["pareto_k_max"])
ax = az.plot_khat(sampled.elpd[worst], show_hlines=True)
ax.set_title(f"{worst}: PSIS k̂ of each test point's importance weights")
ax.figure.savefig("diagnostics_khat.png", dpi=90)
# The sampled ranking matches the exact one wherever the exact gaps are beyond Monte-Carlo noise.
exact_elpd = {m: float(exact.pointwise[m].log_px.sum()) for m in setups}
order = exact.ranking
gaps_resolved = all(
    exact_elpd[a] - exact_elpd[b] > 4 * math.hypot(sampled.pointwise[a].mc_se, sampled.pointwise[b].mc_se)
    for a, b in itertools.pairwise(order))
if gaps_resolved:
    assert sampled.ranking == exact.ranking

# %% [markdown]
# The sampled sums tend to come out a little below the exact ones: log p̂(x) is biased low
# (Jensen), and at points whose k̂ is above the threshold the weights have infinite variance,
# so a rare large weight is usually missed and the reported Monte-Carlo error is too small
# there. More proposal steps or draws, or a better proposal, are the fix; `az.plot_khat`
# shows which points are affected.

# %% [markdown]
# ## Why not `az.loo`?
#
# `to_inference_data` records the guide's draws of each point's *own* latent. PSIS-LOO reads
# a posterior group as draws of parameters shared by all points, and would reweight
# log p(x_n | z_n) under them: for these models that estimates nothing (k̂ > 1 everywhere).
# So the data carry no `log_likelihood` group and `az.loo` says so:

# %%
idatas = {name: to_inference_data(s.model, s.guide, None, num_draws=num_draws, learned_model=s)
          for name, s in setups.items() if name in ("MAPA", "VAE")}
print(idatas["MAPA"])
try:
    az.loo(idatas["MAPA"])
except TypeError as e:
    print("az.loo:", e)

# %% [markdown]
# ## Does the model generate the data?
#
# `posterior_predictive` holds 100 replicate data sets drawn from the learned generative
# model (prior, decoder, likelihood), beside `observed_data`: `az.plot_ppc` compares their
# marginal densities, one panel per coordinate; the scatter shows one replicate in 2-D.

# %%
fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
for row, (name, idata) in enumerate(idatas.items()):
    az.plot_ppc(idata, flatten=["obs"], num_pp_samples=50, ax=axes[row, :2], legend=row == 0)
    for col in range(2):
        axes[row, col].set_title(f"{name}: x[{col}]")
        axes[row, col].set_xlabel(f"x[{col}]")
    rep = idata.posterior_predictive["x"].values[0, 0]
    obs = idata.observed_data["x"].values
    axes[row, 2].scatter(obs[:, 0], obs[:, 1], s=3, label="data")
    axes[row, 2].scatter(rep[:, 0], rep[:, 1], s=3, alpha=0.6, label="one replicate")
    axes[row, 2].set_aspect("equal")
    axes[row, 2].set_xlabel("x[0]")
    axes[row, 2].set_ylabel("x[1]")
    axes[row, 2].set_title(f"{name}: data and samples")
    axes[row, 2].legend(loc="upper right", fontsize=7)
fig.tight_layout()
fig.savefig("diagnostics_ppc.png", dpi=90)

# %% [markdown]
# The decoder was trained on codes from the aggregate posterior (1/N) Σ_n q(z | x_n); new
# samples use codes from the prior. Where the two differ, the model generates points unlike
# the data. For MAPA the prior is recovered from the codes (a Gaussian copula), for the VAE
# it is fixed to N(0, 1).

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, (name, idata) in zip(axes, idatas.items()):
    post, prior = aggregate_posterior(idata)
    bins = np.histogram_bin_edges(np.concatenate([post[:, 0], prior[:, 0]]), bins=60)
    ax.hist(post[:, 0], bins=bins, density=True, alpha=0.6, label="aggregate posterior")
    ax.hist(prior[:, 0], bins=bins, density=True, alpha=0.6, label="learned prior")
    ax.set_xlabel("code z")
    ax.set_ylabel("density")
    ax.set_title(name)
    ax.legend(fontsize=7)
    print(f"{name}: aggregate posterior mean {post.mean():.2f} sd {post.std():.2f};"
          f" prior mean {prior.mean():.2f} sd {prior.std():.2f}")
fig.tight_layout()
fig.savefig("diagnostics_codes.png", dpi=90)

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
# ## The guides' own importance weights
#
# `sample_stats["log_weight"]` holds log p(x_n, latent) - log q(latent | x_n) for each guide
# draw. For the VAE's Gaussian guide k̂ says whether the guide is a usable proposal. MAPA's
# weights take few distinct values (a discrete proposal over a few indices): k̂ is then
# degenerate and reported as NaN (flagged "not meaningful"), with the ESS still given.

# %%
d_vae = importance_diagnostics(idatas["VAE"].sample_stats["log_weight"].values[0].T)
d_mapa = importance_diagnostics(idatas["MAPA"].sample_stats["log_weight"].values[0].T)
print("VAE  guide weights:", {k: round(v, 3) for k, v in d_vae.summary().items()})
print("MAPA guide weights:", {k: round(v, 3) for k, v in d_mapa.summary().items()})
assert d_vae.meaningful.any()
print(f"done in {time.perf_counter() - start:.0f} s")
