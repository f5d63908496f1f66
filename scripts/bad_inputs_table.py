"""Tries every bad input listed in docs/reliability.md and prints what each gets (a Markdown table).

Run:  python scripts/bad_inputs_table.py
"""
import torch, pyro, warnings, tempfile, os
warnings.simplefilter("ignore")
from pyro_mapa import (AmortizedCodebook, BernoulliKernel, EmpiricalizedModel, GaussianKernel, MAPAGuide,
                       NormalLikelihood, PosteriorTable, TraceIWAE_ELBO, TraceMAPA_ELBO, mlp)
from pyro_mapa.training.checkpoint import load_checkpoint
from pyro_mapa.training import fit
from pyro_mapa.experiments.methods import build_method
from pyro_mapa.experiments.datasets import load_dataset
torch.manual_seed(0)
X = torch.randn(20, 2)
K = GaussianKernel(0.5)
T = PosteriorTable.from_data(X, K)
model = EmpiricalizedModel(AmortizedCodebook(mlp(2,1), mlp(1,2), X), NormalLikelihood(0.5))
cases = {
 "data with NaN": lambda: PosteriorTable.from_data(torch.tensor([[0., float('nan')], [1., 1.]]), K),
 "data with inf": lambda: PosteriorTable.from_data(torch.tensor([[0., float('inf')], [1., 1.]]), K),
 "1-D data": lambda: PosteriorTable.from_data(torch.zeros(5), K),
 "integer data": lambda: PosteriorTable.from_data(torch.zeros(5, 2, dtype=torch.long), K),
 "empty data": lambda: PosteriorTable.from_data(torch.zeros(0, 2), K),
 "N = 1": lambda: PosteriorTable.from_data(torch.zeros(1, 2), K),
 "bandwidth = 0": lambda: GaussianKernel(0.0),
 "bandwidth = -1": lambda: GaussianKernel(-1.0),
 "rho = 0.5": lambda: BernoulliKernel(0.5),
 "rho = 1.2": lambda: BernoulliKernel(1.2),
 "non-binary data, Bernoulli kernel": lambda: PosteriorTable.from_data(torch.rand(5, 3), BernoulliKernel(0.9)),
 "K < 0": lambda: TraceMAPA_ELBO(-1, 0),
 "S < 0": lambda: TraceMAPA_ELBO(1, -1),
 "K = S = 0": lambda: TraceMAPA_ELBO(0, 0),
 "K > N": lambda: TraceMAPA_ELBO(21, 0).loss(model, MAPAGuide(T)),
 "K > max_support": lambda: TraceMAPA_ELBO(5, 0).loss(model, MAPAGuide(PosteriorTable.from_data(X, K, max_support=3))),
 "max_support = 0": lambda: PosteriorTable.from_data(X, K, max_support=0),
 "index site of another support size": lambda: TraceMAPA_ELBO(1).loss(model, MAPAGuide(PosteriorTable.from_data(torch.randn(25, 2), K))),
 "guide names a missing site": lambda: TraceMAPA_ELBO(1).loss(model, MAPAGuide(T, site="z")),
 "guide names another plate": lambda: TraceMAPA_ELBO(1).loss(model, MAPAGuide(T, plate="batch")),
 "table built on other data": lambda: MAPAGuide(T, data=X + 1),
 "guide that is not a MAPAGuide": lambda: TraceMAPA_ELBO(1).loss(model, lambda *a: None),
 "remainder option unknown": lambda: TraceMAPA_ELBO(1, 1, remainder="stratified"),
 "IWAE num_particles = 0": lambda: TraceIWAE_ELBO(0),
}
def nan_loss():
    pyro.enable_validation(False)
    ds = load_dataset("circle", num_train=50, num_valid=5, num_test=5)
    s = build_method("MAPA", ds.train, ds.likelihood, hidden=(4,))
    with torch.no_grad(): next(s.decoder.parameters()).fill_(float("nan"))
    fit(s.model, s.guide, s.loss, 50, epochs=1, progress=False)
cases["decoder turns NaN during training"] = nan_loss
d = tempfile.mkdtemp()
T.save(os.path.join(d, "t.pt")); raw = open(os.path.join(d, "t.pt"), "rb").read()
open(os.path.join(d, "cut.pt"), "wb").write(raw[:len(raw)//2])
cases["truncated table file"] = lambda: PosteriorTable.load(os.path.join(d, "cut.pt"))
p = torch.load(os.path.join(d, "t.pt"), weights_only=True); p["log_probs"] += 1; torch.save(p, os.path.join(d, "tam.pt"))
cases["altered table file"] = lambda: PosteriorTable.load(os.path.join(d, "tam.pt"))
torch.save({"format": "x"}, os.path.join(d, "c.ckpt"))
cases["foreign checkpoint"] = lambda: load_checkpoint(os.path.join(d, "c.ckpt"))
for name, fn in cases.items():
    try:
        fn(); print(f"| {name} | (no error) |")
    except Exception as e:
        msg = str(e).replace("|", "\\|").replace("\n", " ").replace(d, "<dir>")
        if len(msg) > 230: msg = msg[:227] + "..."
        print(f"| {name} | `{type(e).__name__}`: {msg} |")
