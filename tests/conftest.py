import pyro
import pytest
import torch

from pyro_mapa import AmortizedCodebook, EmpiricalizedModel, NormalLikelihood, mlp

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Every test starts from an empty param store, a fixed seed and Pyro validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def make_empiricalized(n=12, d_obs=2, sigma=0.3, seed=0):
    """A small random empiricalized model (1-D codes) on random data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_obs, generator=g)
    torch.manual_seed(seed)
    codebook = AmortizedCodebook(mlp(d_obs, 1, (8,)), mlp(1, d_obs, (8,)), x)
    likelihood = NormalLikelihood(sigma)
    return EmpiricalizedModel(codebook, likelihood), x, likelihood
