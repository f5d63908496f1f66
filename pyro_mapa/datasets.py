"""Synthetic ground-truth data sets with exact densities: the paper's five and LiBI's four.

The five benchmarks of the paper (§6, App. C.1; docs/datasets.md; :data:`DATASET_NAMES`): each is
``z ~ N(0, 1)`` (``d = 1``), ``x = f(z) + ε`` in ``R²`` with ``ε ~ N(0, σ² I)``, ``σ = 0.05``. The
exact ``log p_true(x)`` is a 1-D integral, computed by quadrature.

The four of LiBI (Yacoby, Pan and Doshi-Velez, "Characterizing and avoiding problematic global optima
of variational autoencoders", AABI 2019, PMLR 118, 2020; :data:`LIBI_DATASET_NAMES`): ``z ~ N(0, I₂)``,
500/500/500 points by default, each with its exact density (:class:`LiBIDataset`).

Example:
    >>> ds = load_dataset("figure8", num_train=100, num_valid=10, num_test=10, seed=0)
    >>> ds.train.shape
    torch.Size([100, 2])
    >>> load_dataset("gaussian_4d", seed=0).train.shape
    torch.Size([500, 4])
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import as_data_tensor
from .evaluation.exact import quadrature_log_likelihood
from .models.likelihoods import NormalLikelihood
from .models.networks import mlp

__all__ = [
    "ALL_DATASET_NAMES",
    "DATASET_NAMES",
    "GAUSSIAN_4D_A",
    "JTEX_A",
    "JTEX_B",
    "JTEX_SIGMA2",
    "LIBI_DATASET_NAMES",
    "LIBI_SIGMA",
    "LiBIDataset",
    "MOBIUS_COEFFICIENTS",
    "SIGMA",
    "SyntheticDataset",
    "fit_mobius_network",
    "fit_surrogate_decoder",
    "jtex_loading",
    "load_dataset",
    "mobius",
    "mobius_network",
    "true_decoder",
]

SIGMA = 0.05


def _phi(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _figure8(z: Tensor) -> Tensor:
    u = (0.6 + 1.8 * _phi(z)) * math.pi
    den = torch.sin(u) ** 2 + 1.0
    return torch.stack([math.sqrt(2) * torch.cos(u) / den, math.sqrt(2) * torch.cos(u) * torch.sin(u) / den], -1)


def _circle(z: Tensor) -> Tensor:
    u = 2 * math.pi * _phi(z)
    return torch.stack([torch.cos(u), torch.sin(u)], -1)


def _absolute_value(z: Tensor) -> Tensor:
    u = 4 * _phi(z) - 2
    return torch.stack([u, u.abs()], -1)


def _clusters(z: Tensor) -> Tensor:
    s = sum(torch.sigmoid(12 * (z - c)) for c in (-1.2, -0.4, 0.4, 1.2))
    u = 2 * math.pi * s / 5
    return torch.stack([torch.cos(u), torch.sin(u)], -1)


def _spiral_dots(z: Tensor) -> Tensor:
    p = 5 * _phi(z)
    s = torch.floor(p) + torch.sigmoid(20 * (p - torch.floor(p) - 0.5))
    u = 0.6 + 2.4 * s / 5
    r = u / 3
    return torch.stack([r * torch.cos(2 * math.pi * u), r * torch.sin(2 * math.pi * u)], -1)


_DECODERS: dict[str, Callable[[Tensor], Tensor]] = {
    "figure8": _figure8,
    "circle": _circle,
    "absolute_value": _absolute_value,
    "clusters": _clusters,
    "spiral_dots": _spiral_dots,
}
DATASET_NAMES = tuple(_DECODERS)
LIBI_DATASET_NAMES = ("linear_jtex", "cubic_jtex", "gaussian_4d", "mobius")
ALL_DATASET_NAMES = DATASET_NAMES + LIBI_DATASET_NAMES
F64 = torch.float64

# LiBI's constants (docs/datasets.md). JTEx: x = L z + ε, L = chol(A Aᵀ + B), ε ~ N(0, σ² I − B).
JTEX_A = ((0.75, 0.25), (1.5, -1.0))
JTEX_B = 0.006  # B = JTEX_B · I₂
JTEX_SIGMA2 = 0.01
GAUSSIAN_4D_A = ((-0.7074, 0.0995, 0.0286, 0.1240), (0.7074, 0.9948, -0.9995, 0.9920))
MOBIUS_COEFFICIENTS = (1 + 0j, 1 + 4j, 1 + 0j, 7 + 4j)  # (a, b, c, d) of m(w) = (a w + b) / (c w + d)
LIBI_SIGMA = {
    "linear_jtex": math.sqrt(JTEX_SIGMA2 - JTEX_B),
    "cubic_jtex": math.sqrt(JTEX_SIGMA2 - JTEX_B),
    "gaussian_4d": 1e-3,
    "mobius": math.sqrt(1e-5),
}
MOBIUS_RADIUS = 7.0  # the committed network is injective on |z| <= 7 (tests/experiments/test_datasets.py)
_MOBIUS_FILE = Path(__file__).with_name("data") / "mobius_mlp.json"


def jtex_loading() -> Tensor:
    """``L = cholesky(A Aᵀ + B)`` (float64, lower triangular) of LinearJTEx and CubicJTEx."""
    a = torch.tensor(JTEX_A, dtype=F64)
    return torch.linalg.cholesky(a @ a.T + JTEX_B * torch.eye(2, dtype=F64))


def mobius(z: Tensor) -> Tensor:
    """The Möbius map ``m(w) = (w + 1 + 4i) / (w + 7 + 4i)`` on ``w = z₁ + i z₂``, as ``(Re, Im)``."""
    a, b, c, d = MOBIUS_COEFFICIENTS
    w = torch.complex(z[..., 0].to(F64), z[..., 1].to(F64))
    y = (a * w + b) / (c * w + d)
    return torch.stack([y.real, y.imag], -1).to(z.dtype)


def fit_mobius_network(seed: int = 0, steps: int = 30000) -> nn.Sequential:
    """Fits ``mlp(2, 2, (50, 50), nn.Tanh)`` to :func:`mobius`; how ``data/mobius_mlp.json`` was made.

    Adam (lr 3e-3, cosine-decayed to 0) on the squared error, batches of 1024 fresh draws:
    768 from the prior ``N(0, I)`` and 256 from ``N(0, 4 I)``. The wider draws keep the network
    injective on the disc ``|z| <= 7`` (all but ``exp(-24.5) ≈ 2e-11`` of the prior mass), which
    the exact density needs. To regenerate the file: ``_save_mobius_network(fit_mobius_network())``
    (the result depends on the torch build; the committed weights define the data set).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp(2, 2, (50, 50), nn.Tanh)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        z = torch.randn(1024, 2, generator=g)
        z[768:] *= 2.0
        loss = ((net(z) - mobius(z)) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.requires_grad_(False)


def _save_mobius_network(net: nn.Sequential, path: Path = _MOBIUS_FILE) -> None:
    state = {k: v.float().double().tolist() for k, v in net.state_dict().items()}  # float32 values, exactly
    meta = {"architecture": "mlp(2, 2, (50, 50), nn.Tanh)", "fit": "fit_mobius_network()"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "state_dict": state}) + "\n")


@functools.lru_cache(maxsize=None)
def mobius_network() -> nn.Sequential:
    """The Mobius data set's ``f``: the committed network (float64, frozen), from ``data/mobius_mlp.json``.

    Cached and shared: ``copy.deepcopy`` it before training from it. Mean ``|f − m|`` 6.4e-4 on prior draws.
    """
    state = json.loads(_MOBIUS_FILE.read_text())["state_dict"]
    net = mlp(2, 2, (50, 50), nn.Tanh).double()
    net.load_state_dict({k: torch.tensor(v, dtype=F64) for k, v in state.items()})
    return net.requires_grad_(False)


def _libi_decoder(name: str) -> Callable[[Tensor], Tensor]:
    if name == "mobius":
        net = mobius_network()
        return lambda z: net(z.to(F64)).to(z.dtype)
    if name == "gaussian_4d":
        a = torch.tensor(GAUSSIAN_4D_A, dtype=F64)
        return lambda z: z @ a.to(z.dtype)
    lt = jtex_loading().T
    if name == "linear_jtex":
        return lambda z: z @ lt.to(z.dtype)
    return lambda z: (z @ lt.to(z.dtype)) ** 3


def true_decoder(name: str) -> Callable[[Tensor], Tensor]:
    """The ground-truth ``f``: ``(..., 1) -> (..., 2)`` (the five), ``(..., 2) -> (..., D)`` (LiBI's four)."""
    if name in LIBI_DATASET_NAMES:
        return _libi_decoder(name)
    if name not in _DECODERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(ALL_DATASET_NAMES)}")
    f = _DECODERS[name]
    return lambda z: f(z[..., 0])


@functools.lru_cache(maxsize=None)
def fit_surrogate_decoder(
    name: str,
    hidden: tuple[int, ...] = (50, 50),
    steps: int = 3000,
    lr: float = 3e-3,
    seed: int = 0,
) -> Callable[[Tensor], Tensor]:
    """A small network fitted to the true ``f`` with full supervision (App. C.1).

    The paper generates its data from such a network, so that the truth is exactly
    representable by the model class. Trained by mean squared error on fresh
    ``z ~ N(0, 1)`` every step (batch 512), Adam with a cosine-decayed learning rate.
    Cached per argument set within a process.

    Returns:
        A frozen function ``(..., 1) -> (..., 2)`` (float32 inside, any float dtype out).
    """
    from .models.networks import mlp

    f = true_decoder(name)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp(1, 2, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        z = torch.randn(512, 1, generator=g)
        loss = ((net(z) - f(z)) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.requires_grad_(False)

    def decode(z: Tensor) -> Tensor:
        return net(z.float()).to(z.dtype)

    return decode


@dataclass
class SyntheticDataset:
    """Train/validation/test draws of one benchmark with their true latents and exact log-densities."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    train_z: Tensor
    valid_z: Tensor
    test_z: Tensor
    sigma: float
    decoder: Callable[[Tensor], Tensor]

    @property
    def likelihood(self) -> NormalLikelihood:
        return NormalLikelihood(self.sigma)

    def true_log_prob(self, x: Tensor, num_points: int = 4001) -> Tensor:
        """Exact ``log p_true(x)`` per point, by quadrature over ``z ~ N(0, 1)`` (float64)."""
        x64 = x.to(torch.float64)
        return quadrature_log_likelihood(
            x64, self.decoder, self.likelihood, num_points=num_points, low=-7.0, high=7.0
        ).to(x.dtype)


def _draw(f: Callable[[Tensor], Tensor], n: int, sigma: float, seed: int, d: int = 1, D: int = 2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = f(z) + sigma * torch.randn(n, D, generator=g, dtype=torch.float64)
    return x.float(), z.float()


def _cbrt(t: Tensor) -> Tensor:
    return torch.sign(t) * t.abs() ** (1 / 3)


def _cubic_log_prob(x: Tensor, sigma: float, n: int, k: float = 9.0, chunk: int = 128) -> Tensor:
    """``log ∫ N(u; 0, L Lᵀ) Π_i N(x_i; u_i³, σ²) du``, ``u = L z``: midpoint rule on a box per point.

    The likelihood factor of ``u_i`` is below ``exp(-k²/2)`` outside ``[∛(x_i − kσ), ∛(x_i + kσ)]`` (``u³``
    is increasing), so each point gets its own box, ``n`` nodes a side; the integrand is smooth and
    negligible at the box's edges, where the midpoint rule converges faster than any power of ``1/n``.
    """
    lt = jtex_loading()
    cov = lt @ lt.T
    prec = torch.linalg.inv(cov)
    const = -2 * math.log(2 * math.pi) - 0.5 * float(torch.logdet(cov)) - 2 * math.log(sigma)
    t = (torch.arange(n, dtype=F64) + 0.5) / n
    out = []
    for xb in x.split(chunk):
        lo, hi = _cbrt(xb - k * sigma), _cbrt(xb + k * sigma)  # (B, 2)
        u = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * t  # (B, 2, n)
        ll = -0.5 * ((xb.unsqueeze(-1) - u**3) / sigma) ** 2 + torch.log((hi - lo) / n).unsqueeze(-1)
        u1, u2 = u[:, 0, :, None], u[:, 1, None, :]
        quad = prec[0, 0] * u1**2 + 2 * prec[0, 1] * u1 * u2 + prec[1, 1] * u2**2  # (B, n, n)
        terms = -0.5 * quad + ll[:, 0, :, None] + ll[:, 1, None, :]
        out.append(terms.flatten(1).logsumexp(1) + const)
    return torch.cat(out)


def _jacobian(net: nn.Module, z: Tensor) -> Tensor:
    return torch.func.vmap(torch.func.jacrev(net))(z)


def _mobius_preimage(x: Tensor, net: nn.Module, iters: int = 60) -> Tensor:
    """``z`` with ``f(z) = x``: Newton from the Möbius inverse ``m⁻¹(x)``, kept in ``|z| <= 7`` (float64)."""
    a, b, c, d = MOBIUS_COEFFICIENTS
    y = torch.complex(x[:, 0], x[:, 1])
    w = (d * y - b) / (a - c * y)
    z = torch.stack([w.real, w.imag], -1)
    z = torch.where(torch.isfinite(z).all(-1, keepdim=True), z, torch.zeros_like(z))
    for _ in range(iters):
        z = z * (MOBIUS_RADIUS / z.norm(dim=-1, keepdim=True)).clamp(max=1.0)
        step = torch.linalg.solve(_jacobian(net, z), net(z) - x)  # det J > 0 on the disc
        step = step * (0.5 / step.norm(dim=-1, keepdim=True)).clamp(max=1.0)
        z = z - step
        if float(step.abs().max()) < 1e-14:
            break
    return z * (MOBIUS_RADIUS / z.norm(dim=-1, keepdim=True)).clamp(max=1.0)


def _mobius_log_prob(x: Tensor, sigma: float, n: int, k: float = 9.0, chunk: int = 64) -> Tensor:
    """``log ∫ N(z; 0, I) N(x; f(z), σ² I) dz`` around the unique preimage ``z*`` of ``x``.

    ``f`` is injective on ``|z| <= 7`` (checked by the tests), so the integrand is concentrated near
    ``z*``: in ``v = J(z*)(z − z*)/σ`` it is a slightly distorted standard normal, integrated by the
    midpoint rule on ``[−k, k]²`` with ``n`` nodes a side. Prior mass beyond ``|z| = 7`` (2e-11) is ignored.
    """
    net = mobius_network()
    h = 2 * k / n
    v1 = -k + h * (torch.arange(n, dtype=F64) + 0.5)
    v = torch.cartesian_prod(v1, v1)  # (G, 2)
    out = []
    for xb in x.split(chunk):
        z0 = _mobius_preimage(xb, net)
        jinv = torch.linalg.inv(_jacobian(net, z0))  # (B, 2, 2)
        zz = z0.unsqueeze(1) + sigma * torch.einsum("bij,gj->bgi", jinv, v)  # (B, G, 2)
        log_jac = torch.linalg.slogdet(jinv).logabsdet + 2 * math.log(sigma * h)
        terms = -0.5 * (zz**2).sum(-1) - 0.5 * ((xb.unsqueeze(1) - net(zz)) ** 2).sum(-1) / sigma**2
        out.append(terms.logsumexp(1) + log_jac - 2 * math.log(2 * math.pi * sigma))
    return torch.cat(out)


@dataclass
class LiBIDataset(SyntheticDataset):
    """One of LiBI's four data sets: ``z ~ N(0, I₂)``, ``x = decoder(z) + ε``, ``ε ~ N(0, sigma² I_D)``.

    ``true_log_prob`` is exact: closed form for ``linear_jtex`` (``N(0, L Lᵀ + σ² I)``) and
    ``gaussian_4d`` (``N(0, Aᵀ A + σ² I)``); 2-D quadrature for ``cubic_jtex`` and ``mobius``.
    Our choices where the paper (as SEED_METHODS.md records it) is silent: 500/500/500 points; ``L``
    the lower Cholesky factor; ``sigma`` the sd of ``ε`` (so ``√(0.01 − 0.006)`` for the JTEx sets);
    Mobius's ``f`` a committed ``mlp(2, 2, (50, 50), nn.Tanh)`` (:func:`fit_mobius_network`), whose
    density ignores the prior mass beyond ``|z| = 7`` (2e-11), where ``f`` is no longer injective.
    """

    def true_log_prob(self, x: Tensor, num_points: int | None = None) -> Tensor:
        """Exact ``log p_true(x)`` per row of ``x`` ``(N, D)``, in float64, returned in ``x``'s dtype.

        Arguments:
            x: Points, shape ``(N, D)``.
            num_points: Quadrature nodes per latent axis (``cubic_jtex``: default 96 on a box per point;
                ``mobius``: default 28 on ``[−9, 9]²`` in whitened coordinates); unused by the closed forms.
        """
        x = as_data_tensor(x, "x")
        dim = self.train.shape[1]
        if x.dim() != 2 or x.shape[1] != dim:
            raise ValueError(f"x must have shape (N, {dim}) for data set {self.name!r}, got {tuple(x.shape)}")
        x64 = x.to(F64)
        s2 = self.sigma**2
        if self.name in ("linear_jtex", "gaussian_4d"):
            m = jtex_loading() if self.name == "linear_jtex" else torch.tensor(GAUSSIAN_4D_A, dtype=F64).T
            cov = m @ m.T + s2 * torch.eye(dim, dtype=F64)
            out = torch.distributions.MultivariateNormal(torch.zeros(dim, dtype=F64), cov).log_prob(x64)
        elif self.name == "cubic_jtex":
            out = _cubic_log_prob(x64, self.sigma, 96 if num_points is None else num_points)
        else:
            out = _mobius_log_prob(x64, self.sigma, 28 if num_points is None else num_points)
        return out.to(x.dtype)


def _split_size(value: int | None, default: int, arg: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be a positive int (or None for the data set's default), got {value!r}")
    return value


def load_dataset(
    name: str,
    num_train: int | None = None,
    num_valid: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    sigma: float | None = None,
    truth: str = "formula",
) -> SyntheticDataset:
    """Draws a data set; the splits use seeds ``3*seed``, ``3*seed+1``, ``3*seed+2`` (independent draws).

    LiBI's four (docs/datasets.md; constants as in the paper, :data:`JTEX_A` etc.), all ``z ~ N(0, I₂)``:

    - ``linear_jtex``: ``x = L z + ε``, ``L = cholesky(A Aᵀ + B)``, ``ε ~ N(0, σ² I − B)``, ``σ² = 0.01``,
      ``B = 0.006 I``; so ``sigma = √0.004`` and ``p(x) = N(0, A Aᵀ + σ² I)`` exactly.
    - ``cubic_jtex``: ``x = (L z)³`` (elementwise) ``+ ε``, the rest as ``linear_jtex``.
    - ``gaussian_4d``: ``x = Aᵀ z + ε`` in ``R⁴``, ``ε ~ N(0, 10⁻⁶ I)``; ``p(x) = N(0, Aᵀ A + 10⁻⁶ I)``.
    - ``mobius``: ``x = f(z) + ε``, ``ε ~ N(0, 10⁻⁵ I)``, ``f`` the committed network fitted to the
      Möbius map (:func:`mobius_network`, :func:`fit_mobius_network`).

    Arguments:
        name: One of :data:`ALL_DATASET_NAMES` (:data:`DATASET_NAMES` + :data:`LIBI_DATASET_NAMES`).
        num_train, num_valid, num_test: Split sizes; ``None``: the paper's (1000/1000/2000 for the
            five, 500/500/500 for LiBI's four).
        seed: The draw; different seeds give independent data sets.
        sigma: Standard deviation of ``ε``; ``None``: 0.05 for the five, :data:`LIBI_SIGMA` for LiBI's.
        truth: ``"formula"`` (default) uses ``f`` as written in docs/datasets.md; ``"network"``
            uses :func:`fit_surrogate_decoder` (the paper's choice), fitted with seed 0
            so every draw shares one truth. LiBI's data sets accept only ``"formula"``.

    Raises:
        ValueError: an unknown ``name`` (the message lists the names), bad sizes, ``sigma`` or ``truth``.
    """
    if name not in ALL_DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(ALL_DATASET_NAMES)}")
    libi = name in LIBI_DATASET_NAMES
    if truth not in ("formula", "network") or (libi and truth != "formula"):
        allowed = "'formula'" if libi else "'formula' or 'network'"
        raise ValueError(f"truth must be {allowed} for data set {name!r}, got {truth!r}")
    sizes = (500, 500, 500) if libi else (1000, 1000, 2000)
    args = zip((num_train, num_valid, num_test), sizes, ("num_train", "num_valid", "num_test"))
    n_train, n_valid, n_test = (_split_size(v, default, arg) for v, default, arg in args)
    if sigma is None:
        sigma = LIBI_SIGMA[name] if libi else SIGMA
    elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a positive finite float (or None for the data set's), got {sigma!r}")
    f = true_decoder(name) if truth == "formula" else fit_surrogate_decoder(name)
    d, dim = (2, 4 if name == "gaussian_4d" else 2) if libi else (1, 2)
    train, train_z = _draw(f, n_train, sigma, 3 * seed, d, dim)
    valid, valid_z = _draw(f, n_valid, sigma, 3 * seed + 1, d, dim)
    test, test_z = _draw(f, n_test, sigma, 3 * seed + 2, d, dim)
    cls = LiBIDataset if libi else SyntheticDataset
    return cls(name, train, valid, test, train_z, valid_z, test_z, float(sigma), f)
