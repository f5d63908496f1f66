"""FreeCodebook: one free code per data point, decoded once per unique index, a drop-in for AmortizedCodebook."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn

from pyro_mapa import (
    EmpiricalizedModel,
    FlowPrior,
    GaussianCopulaPrior,
    GaussianKernel,
    MAPAGuide,
    NormalLikelihood,
    PosteriorTable,
    TraceMAPA_ELBO,
    empirical_log_likelihood,
    mlp,
)
from pyro_mapa.models.free_codebook import FreeCodebook, pca_codes


def make(n=12, d_obs=3, d_lat=2, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    data = torch.randn(n, d_obs, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return FreeCodebook(n, d_lat, mlp(d_lat, d_obs, (5,)).to(dtype), data, **kw)


@pytest.mark.parametrize(
    "index",
    [torch.tensor(4), torch.tensor([3, 0, 3, 9, 1]), torch.tensor([[1, 2], [2, 1], [5, 1]]),
     torch.tensor([[[0, 9, 9], [2, 2, 2]], [[7, 0, 5], [8, 8, 1]]])],
    ids=["0d", "1d", "2d", "3d"],
)
def test_output_is_each_code_decoded_and_counted_once_per_unique_index(index):
    cb = make()
    out = cb(index)
    assert out.shape == index.shape + (3,)
    ref = torch.stack([cb.decoder(cb.z[i].unsqueeze(0))[0] for i in index.reshape(-1).tolist()])
    torch.testing.assert_close(out.reshape(-1, 3), ref, rtol=1e-6, atol=1e-6)
    assert cb.encoder_passes == 0
    assert cb.decoder_passes == len(set(index.reshape(-1).tolist()))
    cb.reset_counts()
    assert (cb.encoder_passes, cb.decoder_passes) == (0, 0)


def test_codes_are_the_parameters():
    cb = make()
    torch.testing.assert_close(cb.codes(), cb.z.detach())
    torch.testing.assert_close(cb.codes(torch.tensor([[4, 1]])), cb.z.detach()[[4, 1]].unsqueeze(0))
    with torch.no_grad():
        assert not cb.codes().requires_grad  # a copy: safe to hand to prior recovery
    assert cb.codes().requires_grad  # and differentiable outside no_grad
    assert [name for name, _ in cb.named_parameters()][0] == "z"


def mapa_model(n=12, d_lat=1, sigma=0.5, seed=0):
    cb = make(n=n, d_obs=2, d_lat=d_lat, seed=seed)
    lik = NormalLikelihood(sigma)
    table = PosteriorTable.from_data(cb.data, GaussianKernel(sigma))
    return EmpiricalizedModel(cb, lik), MAPAGuide(table, "c", "data", data=cb.data), lik


def test_gradients_reach_exactly_the_codes_used_in_a_step():
    model, guide, _ = mapa_model(n=20, sigma=2.0)
    cb = model.codebook
    used = []
    cb.register_forward_pre_hook(lambda mod, args: used.append(args[0].reshape(-1)))
    elbo = TraceMAPA_ELBO(2, 2, rng_seed=0, max_plate_nesting=1)
    batch = torch.tensor([0, 7, 8])
    elbo.loss_and_grads(model, guide, batch)
    used_set = set(torch.cat(used).tolist())
    assert len(used_set) < 20  # the case leaves some codes out
    nonzero = set(torch.nonzero(cb.z.grad.abs().sum(1)).reshape(-1).tolist())
    assert nonzero == used_set
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in cb.decoder.parameters())


def test_empirical_log_likelihood_equals_enumeration():
    model, guide, lik = mapa_model(n=12)
    cb = model.codebook
    # By hand in float64: log (1/N) sum_i N(x_n; f(z_i), sigma^2 I).
    means = cb.decoder(cb.z).detach().double()
    x = cb.data.double()
    sq = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    ll = -0.5 * sq / lik.sigma**2 - x.shape[1] * math.log(lik.sigma * math.sqrt(2 * math.pi))
    expected = torch.logsumexp(ll, 1) - math.log(len(x))
    got = empirical_log_likelihood(cb, lik)
    torch.testing.assert_close(got.detach().double(), expected, rtol=1e-5, atol=1e-5)
    # ... and the MAPA bound with K = N is that enumeration (the full batch).
    bound = -TraceMAPA_ELBO(12, 0, max_plate_nesting=1).loss(model, guide)
    assert bound == pytest.approx(float(expected.sum()), rel=1e-5)


def test_svi_decreases_the_loss_and_moves_only_codes_and_decoder():
    pyro.clear_param_store()
    model, guide, lik = mapa_model(n=30, sigma=0.3)
    cb = model.codebook
    before = float(empirical_log_likelihood(cb, lik).sum().detach())
    svi = SVI(model, guide, Adam({"lr": 0.02}), TraceMAPA_ELBO(3, 2, max_plate_nesting=1))
    for step in range(150):
        svi.step(torch.randperm(30)[:10])
    after = float(empirical_log_likelihood(cb, lik).sum().detach())
    assert after > before + 10.0  # exact log-likelihood of the empiricalized model, in nats
    names = set(pyro.get_param_store().keys())
    assert "codebook$$$z" in names and not any("encoder" in k for k in names)


def test_prior_recovery_and_evaluation_afterwards():
    model, _, lik = mapa_model(n=40, d_lat=1)
    with torch.no_grad():
        codes = model.codebook.codes()
    copula = GaussianCopulaPrior(codes)
    u = torch.linspace(-2, 2, 5).unsqueeze(-1)
    assert torch.isfinite(copula.transform(u)).all()
    cb2 = make(n=40, d_obs=2, d_lat=2)
    with torch.no_grad():
        codes2 = cb2.codes()
    flow = FlowPrior.fit(codes2, steps=5, flow="maf", hidden=(8,), transforms=1)
    assert torch.isfinite(flow.log_prob(codes2)).all()


def test_pca_init_is_the_standardized_principal_projection():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=g) @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1]))
    codes = pca_codes(x, 2, scale=0.5)
    xc = (x - x.mean(0)).double()
    _, _, vt = torch.linalg.svd(xc, full_matrices=False)
    proj = xc @ vt[:2].T
    ref = 0.5 * proj / proj.std(0)
    signs = torch.sign((codes.double() * ref).sum(0))  # principal axes are defined up to sign
    torch.testing.assert_close(codes.double() * signs, ref, rtol=1e-4, atol=1e-5)
    # Beyond the data's rank the axes are zero.
    wide = pca_codes(x[:, :1], 3)
    assert torch.all(wide[:, 1:] == 0) and wide[:, 0].std() == pytest.approx(1.0, rel=1e-5)


def test_normal_init_and_dtype_follow_the_data():
    cb = make(n=4000, d_lat=2, dtype=torch.float64, init="normal", init_scale=0.1,
              generator=torch.Generator().manual_seed(0))
    assert cb.z.dtype == torch.float64 and cb.latent_dim == 2 and cb.num_codes == 4000
    sd = cb.z.detach().std()
    se = 0.1 / math.sqrt(2 * 8000)  # standard error of a sample std
    assert abs(float(sd) - 0.1) < 4 * se
    init = torch.arange(24.0).reshape(12, 2)
    assert torch.equal(make(init=init).z.detach(), init)


def test_bad_arguments():
    dec, data = mlp(2, 3, (5,)), torch.randn(10, 3)
    with pytest.raises(ValueError, match="num_codes=9 must equal"):
        FreeCodebook(9, 2, dec, data)
    with pytest.raises(TypeError, match="num_codes must be an int"):
        FreeCodebook(10.0, 2, dec, data)
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        FreeCodebook(10, 0, dec, data)
    with pytest.raises(TypeError, match="decoder must be a torch.nn.Module"):
        FreeCodebook(10, 2, lambda z: z, data)
    with pytest.raises(ValueError, match="data must be a tensor of shape"):
        FreeCodebook(10, 2, dec, torch.randn(10))
    with pytest.raises(TypeError, match="data must be a floating-point"):
        FreeCodebook(10, 2, dec, torch.ones(10, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="init must be 'pca', 'normal'"):
        FreeCodebook(10, 2, dec, data, init="zeros")
    with pytest.raises(ValueError, match=r"init must have shape \(num_codes, latent_dim\) = \(10, 2\)"):
        FreeCodebook(10, 2, dec, data, init=torch.zeros(10, 3))
    with pytest.raises(ValueError, match="init must be a finite"):
        FreeCodebook(10, 2, dec, data, init=torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="init_scale must be a positive"):
        FreeCodebook(10, 2, dec, data, init_scale=0.0)
    cb = FreeCodebook(10, 2, dec, data)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        cb(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"index must hold code indices in \[0, 10\)"):
        cb(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"index must hold code indices in \[0, 10\)"):
        cb(torch.tensor([-1, 2]))  # refused, not wrapped around to the last code
    with pytest.raises(ValueError, match=r"index must hold code indices in \[0, 10\)"):
        cb.codes(torch.tensor([11]))


def test_moves_with_to():
    cb = make().to(torch.float64)
    assert cb.z.dtype == torch.float64 and cb.data.dtype == torch.float64
    assert cb(torch.tensor([1, 2])).dtype == torch.float64
    assert isinstance(cb.decoder, nn.Module)


def test_forward_reads_no_scalar_on_the_host():
    # Besides torch.unique (a sync on accelerators, by design), nothing in forward reads a value.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    cb = make()
    reads = Reads()
    with reads:
        cb(torch.tensor([[1, 2], [2, 1], [5, 1]])).sum().backward()
    assert "_unique2" in reads.names and "_local_scalar_dense" not in reads.names
