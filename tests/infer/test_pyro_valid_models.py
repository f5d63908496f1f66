"""Pyro's tests/infer/test_valid_models.py, Trace_ELBO cases, re-expressed for TraceIWAE_ELBO.

Each test is named after the Pyro test it mirrors (models written here). Every one of Pyro's 122
``Trace_ELBO`` cases gets one of three outcomes, listed in ``OUTCOMES``:

- ``run``: a finite loss, gradients reaching the parameters, and, with only reparameterized
  sites, the one-particle value equal to ``Trace_ELBO``'s on the same seed;
- ``refused``: a ``ValueError`` whose message says what to change (asserted);
- ``error``: Pyro's expected error stays an error.

Pyro's discrete (Bernoulli) latents are refused (TraceIWAE_ELBO needs reparameterized guide
sites); each such structure is also run with a Normal latent in its place (``*_reparameterized``).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.reparam import LatentStableReparam
from torch.distributions import constraints

from pyro_mapa import TraceIWAE_ELBO

NOT_REPARAM = r"is not reparameterizable; TraceIWAE_ELBO needs reparameterized guide sites: use Trace_ELBO"
INNER_SUBSAMPLE = r"an importance-weighted bound with more than one particle needs every subsampled plate"

OUTCOMES = {}  # Pyro test -> number of its Trace_ELBO cases per outcome


def outcome(test, run=0, refused=0, error=0):
    OUTCOMES[test] = {"run": run, "refused": refused, "error": error}


def bernoulli(p):
    return dist.Bernoulli(p)


def normal(p):
    return dist.Normal(p, 1.0)


def assert_runs(model, guide, compare=True, num_particles=3, **kwargs):
    """One particle equals Trace_ELBO on the same seed; P particles: finite loss, gradients, plain and DReG."""
    if compare:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        expected = Trace_ELBO(**{k: v for k, v in kwargs.items() if k != "plate"}).loss(model, guide)
        pyro.set_rng_seed(0)
        got = TraceIWAE_ELBO(1, **kwargs).loss(model, guide)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    for dreg in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        loss = TraceIWAE_ELBO(num_particles, dreg=dreg, **kwargs).loss_and_grads(model, guide)
        assert math.isfinite(loss)
        params = [v.unconstrained() for v in pyro.get_param_store().values()]
        grads = [p.grad for p in params if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        if params:
            assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the parameters"


def assert_refused(model, guide, match, num_particles=3, **kwargs):
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=match):
        TraceIWAE_ELBO(num_particles, **kwargs).loss_and_grads(model, guide)


def assert_error(model, guide, match, error=ValueError, **kwargs):
    """Pyro's expected error, of the exact type Pyro raises (its validation warnings are errors in our test run)."""
    pyro.clear_param_store()
    with pytest.raises(error, match=match):
        TraceIWAE_ELBO(3, **kwargs).loss_and_grads(model, guide)


def param_p():
    return pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)


# ---------------------------------------------------------------- models without (or with missing) latents
outcome("test_nonempty_model_empty_guide_ok", run=2)
outcome("test_nonempty_model_empty_guide_error", error=2)
outcome("test_empty_model_empty_guide_ok", run=2)


def test_nonempty_model_empty_guide_ok():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), obs=torch.zeros(2))

    assert_runs(model, lambda: None)
    exact = -float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0))) * 2
    assert TraceIWAE_ELBO(5).loss(model, lambda: None) == exact  # exactly -log p(x)


def test_nonempty_model_empty_guide_error():
    with pyro.validation_enabled(True):
        assert_error(lambda: pyro.sample("x", dist.Normal(0, 1)), lambda: None, "model but not guide", UserWarning)


def test_empty_model_empty_guide_ok():
    assert_runs(lambda: None, lambda: None)
    assert TraceIWAE_ELBO(4).loss(lambda: None, lambda: None) == 0.0


# ---------------------------------------------------------------- name and shape clashes
outcome("test_variable_clash_in_model_error", error=1)
outcome("test_model_guide_dim_mismatch_error", error=1)
outcome("test_model_guide_shape_mismatch_error", error=1)
outcome("test_variable_clash_in_guide_error", error=1)


def test_variable_clash_in_model_error():
    def model():
        pyro.sample("x", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("x", dist.Bernoulli(param_p()))

    assert_error(model, guide, "Multiple sample sites named", RuntimeError)


@pytest.mark.parametrize(
    "model_shape,guide_shape,events,match",
    [((2,), (2, 1), (1, 2), "invalid log_prob shape|event_dims disagree"),
     ((1, 2), (2, 1), (2, 2), "Model and guide shapes disagree")],
    ids=["test_model_guide_dim_mismatch_error", "test_model_guide_shape_mismatch_error"],
)
def test_model_guide_mismatch_error(model_shape, guide_shape, events, match):
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(model_shape), 1.0).to_event(events[0]))

    def guide():
        loc = pyro.param("loc", torch.zeros(guide_shape))
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(events[1]))

    assert_error(model, guide, match)


def test_variable_clash_in_guide_error():
    def guide():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    assert_error(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)), guide, "Multiple sample sites named", RuntimeError)


# ---------------------------------------------------------------- has_rsample
outcome("test_set_has_rsample_ok", run=1, refused=1)
outcome("test_not_has_rsample_ok", refused=1)


@pytest.mark.parametrize("has_rsample", [False, True])
def test_set_has_rsample_ok(has_rsample):
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal((z * 100).clamp(0, 1), 1.0), obs=torch.tensor(0.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.003)), 1.0).has_rsample_(has_rsample))

    if has_rsample:
        assert_runs(model, guide)
    else:
        assert_refused(model, guide, "guide site 'z' \\(Normal\\) " + NOT_REPARAM)


def test_not_has_rsample_ok():
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Bernoulli(z.round().clamp(0.2, 0.8)), obs=torch.tensor(0.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0).has_rsample_(False))

    assert_refused(model, guide, "guide site 'z' \\(Normal\\) " + NOT_REPARAM)


# ---------------------------------------------------------------- plates with Bernoulli latents (and a Normal in their place)
def check_family(latent, model, guide, p3_match=None, compare=True, **kwargs):
    """Pyro's Bernoulli latent is refused; a Normal latent in its place runs (or, with P > 1, is refused)."""
    if latent is bernoulli:
        assert_refused(model, guide, NOT_REPARAM, **kwargs)
        return
    if p3_match is None:
        assert_runs(model, guide, compare=compare, **kwargs)
    else:
        assert_runs(model, guide, compare=compare, num_particles=1, **kwargs)
        assert_refused(model, guide, p3_match, **kwargs)


FAMILIES = pytest.mark.parametrize("latent", [bernoulli, normal], ids=["pyro", "reparameterized"])
SUBSAMPLE = pytest.mark.parametrize("subsample", [None, 2], ids=["full", "subsample"])
outcome("test_iplate_ok", refused=2)
outcome("test_iplate_variable_clash_error", error=1)
outcome("test_plate_ok", refused=2)
outcome("test_plate_subsample_param_ok", refused=2)
outcome("test_plate_subsample_primitive_ok", refused=2)
outcome("test_plate_param_size_mismatch_error", refused=10, error=4)
outcome("test_plate_no_size_ok", refused=1)


@FAMILIES
@SUBSAMPLE
def test_iplate_ok(latent, subsample):
    def make(guide):
        def fn():
            p = param_p() if guide else torch.tensor(0.3)
            for i in pyro.plate("plate", 4, subsample):
                pyro.sample(f"x_{i}", latent(p))
        return fn

    check_family(latent, make(False), make(True))


def test_iplate_variable_clash_error():
    def model():
        for _ in pyro.plate("plate", 2):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    assert_error(model, model, "Multiple sample sites named", RuntimeError)


@FAMILIES
@pytest.mark.parametrize("variant,subsample", [
    (v, s) for v in ("test_plate_ok", "test_plate_subsample_param_ok", "test_plate_subsample_primitive_ok")
    for s in (None, 5)] + [("test_plate_no_size_ok", None)])
def test_plate_ok(latent, subsample, variant):

    def make(guide):
        def fn():
            p = torch.tensor(0.3)
            size = None if variant == "test_plate_no_size_ok" else 10
            with pyro.plate("plate", size, subsample) as ind:
                if guide and variant == "test_plate_subsample_param_ok":
                    p = pyro.param("p", 0.5 * torch.ones(10), constraint=constraints.unit_interval, event_dim=0)
                    assert p.shape == ind.shape
                elif guide and variant == "test_plate_subsample_primitive_ok":
                    p = pyro.subsample(param_p().expand(10), event_dim=0)
                elif guide:
                    p = param_p()
                d = latent(p)
                if variant in ("test_plate_ok", "test_plate_no_size_ok"):
                    d = d.expand_by([10 if size is None else len(ind)])
                pyro.sample("x", d)
        return fn

    check_family(latent, make(False), make(True))


@pytest.mark.parametrize("shape,ok", [((), True), ((1,), True), ((10,), True), ((3, 1), True),
                                      ((3, 10), True), ((5,), False), ((3, 5), False)])
@SUBSAMPLE
def test_plate_param_size_mismatch_error(shape, ok, subsample):
    def model():
        with pyro.plate("plate", 10, subsample):
            pyro.sample("x", dist.Bernoulli(0.5))

    def guide():
        with pyro.plate("plate", 10, subsample):
            pyro.param("p0", torch.ones(shape), event_dim=0)
            pyro.sample("x", dist.Bernoulli(pyro.param("p", 0.5 * torch.ones(10), event_dim=0)))

    if ok:
        assert_refused(model, guide, "guide site 'x' \\(Bernoulli\\) " + NOT_REPARAM)
    else:
        assert_error(model, guide, "invalid shape of pyro.param")


# ---------------------------------------------------------------- nested loop plates
outcome("test_iplate_iplate_ok", refused=4)
outcome("test_iplate_iplate_swap_ok", refused=4)
outcome("test_iplate_in_model_not_guide_ok", refused=2)
outcome("test_iplate_in_guide_not_model_error", refused=2, error=2)
outcome("test_plate_broadcast_error", error=1)
outcome("test_plate_iplate_ok", refused=1)
outcome("test_iplate_plate_ok", refused=1)


@FAMILIES
@SUBSAMPLE
@pytest.mark.parametrize("max_plate_nesting", [0, float("inf")])
@pytest.mark.parametrize("swap", [False, True], ids=["test_iplate_iplate_ok", "test_iplate_iplate_swap_ok"])
def test_iplate_iplate_ok(latent, subsample, max_plate_nesting, swap):
    def make(guide):
        def fn():
            p = param_p() if guide else torch.tensor(0.3)
            outer, inner = pyro.plate("plate_0", 3, subsample), pyro.plate("plate_1", 3, subsample)
            if guide and swap:
                for j in inner:
                    for i in outer:
                        pyro.sample(f"x_{i}_{j}", latent(p))
            else:
                for i in outer:
                    for j in inner:
                        pyro.sample(f"x_{i}_{j}", latent(p))
        return fn

    # Subsampled: the inner loop is a subsampled plate inside each point (iteration of the outer loop).
    check_family(latent, make(False), make(True), INNER_SUBSAMPLE if subsample else None,
                 max_plate_nesting=max_plate_nesting)


@FAMILIES
@pytest.mark.parametrize("subsample", [None, 5], ids=["full", "subsample"])
def test_iplate_in_model_not_guide_ok(latent, subsample):
    def make(guide):
        def fn():
            p = param_p() if guide else torch.tensor(0.3)
            if not guide:
                for _ in pyro.plate("plate", 10, subsample):
                    pass
            pyro.sample("x", latent(p))
        return fn

    check_family(latent, make(False), make(True))


@pytest.mark.parametrize("is_validate", [True, False])
@pytest.mark.parametrize("subsample", [None, 5], ids=["full", "subsample"])
def test_iplate_in_guide_not_model_error(subsample, is_validate):
    def guide():
        for _ in pyro.plate("plate", 10, subsample):
            pass
        pyro.sample("x", dist.Bernoulli(param_p()))

    def model():
        pyro.sample("x", dist.Bernoulli(0.5))

    with pyro.validation_enabled(is_validate):
        if is_validate:
            assert_error(model, guide, "Found plate statements in guide but not model", UserWarning)
        else:
            assert_refused(model, guide, NOT_REPARAM)


def test_plate_broadcast_error():
    def model():
        with pyro.plate("plate", 10, 5):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand_by([2]))

    assert_error(model, model, "Shape mismatch inside plate")


@FAMILIES
@pytest.mark.parametrize("loop_inside", [True, False], ids=["test_plate_iplate_ok", "test_iplate_plate_ok"])
def test_plate_iplate_ok(latent, loop_inside):
    def make(guide):
        def fn():
            p = param_p() if guide else torch.tensor(0.3)
            vectorized = pyro.plate("plate", 3, 2)
            if loop_inside:
                with vectorized as ind:
                    for i in pyro.plate("iplate", 3, 2):
                        pyro.sample(f"x_{i}", latent(p).expand_by([len(ind)]))
            else:
                for i in pyro.plate("iplate", 3, 2):
                    with vectorized as ind:
                        pyro.sample(f"x_{i}", latent(p).expand_by([len(ind)]))
        return fn

    # The outermost plate is the data plate; the other one, subsampled, sits inside each point.
    check_family(latent, make(False), make(True), INNER_SUBSAMPLE)


# ---------------------------------------------------------------- plate stacks, nested and reused plates
outcome("test_plate_stack_ok", refused=3)
outcome("test_plate_stack_and_plate_ok", refused=3)
outcome("test_nested_plate_plate_ok", refused=1)
outcome("test_plate_reuse_ok", refused=1)
outcome("test_nested_plate_plate_dim_error_1", error=1)
outcome("test_nested_plate_plate_dim_error_2", error=1)
outcome("test_nested_plate_plate_dim_error_3", error=1)
outcome("test_nested_plate_plate_dim_error_4", error=1)
outcome("test_nested_plate_plate_subsample_param_ok", refused=1)
outcome("test_nonnested_plate_plate_ok", refused=1)


@FAMILIES
@pytest.mark.parametrize("sizes", [(3,), (3, 4), (3, 4, 5)])
@pytest.mark.parametrize("inner", [False, True], ids=["test_plate_stack_ok", "test_plate_stack_and_plate_ok"])
def test_plate_stack_ok(latent, sizes, inner):
    def make(guide):
        def fn():
            p = param_p() if guide else torch.tensor(0.3)
            with pyro.plate_stack("plate_stack", sizes):
                if inner:
                    with pyro.plate("plate", 7):
                        pyro.sample("x", latent(p))
                else:
                    pyro.sample("x", latent(p))
        return fn

    check_family(latent, make(False), make(True))


def nested(latent, p, reuse):
    outer = pyro.plate("plate_outer", 10, 5, dim=-1)
    inner = pyro.plate("plate_inner", 11, 6, dim=-2)
    with outer as i:
        pyro.sample("x", latent(p).expand_by([len(i)]))
        if not reuse:
            with inner as j:
                pyro.sample("y", latent(p).expand_by([len(j), len(i)]))
    if reuse:
        with inner as j:
            pyro.sample("y", latent(p).expand_by([len(j), 1]))
        with outer as i, inner as j:
            pyro.sample("z", latent(p).expand_by([len(j), len(i)]))


@FAMILIES
@pytest.mark.parametrize("reuse", [False, True], ids=["test_nested_plate_plate_ok", "test_plate_reuse_ok"])
def test_nested_plate_plate_ok(latent, reuse):
    def model():
        nested(latent, torch.tensor(0.3), reuse)

    def guide():
        nested(latent, param_p(), reuse)

    if latent is normal and reuse:
        # 'y' alone in plate_inner, 'x' in plate_outer: two outermost plates, so the data plate must be named;
        # plate_inner is then subsampled inside the points of plate_outer (refused with P > 1).
        assert_refused(model, guide, "different outermost plates: 'plate_outer' \\(site 'x'\\), 'plate_inner'.*"
                                     "pass TraceIWAE_ELBO\\(plate=")
        check_family(latent, model, guide, INNER_SUBSAMPLE, plate="plate_outer")
    else:
        check_family(latent, model, guide, INNER_SUBSAMPLE if latent is normal else None)


@pytest.mark.parametrize("case,match", [(1, "invalid log_prob shape"), (2, "Shape mismatch inside plate"),
                                        (3, "invalid log_prob shape|shape mismatch"), (4, "hape mismatch inside plate")])
def test_nested_plate_plate_dim_error(case, match):
    def model():
        p = torch.tensor([0.5])
        with pyro.plate("plate_outer", 10, 5) as i:
            pyro.sample("x", dist.Normal(p, 1.0).expand_by([len(i)] if case == 1 else [len(i), 1]))
            with pyro.plate("plate_inner", 11, 6) as j:
                pyro.sample("y", dist.Normal(p, 1.0).expand_by([len(i)] if case == 2 else [len(j)]))
                z_shape = {1: [len(i), len(j)], 2: [len(i), len(j)], 3: [len(j), 1], 4: [len(i), len(i)]}[case]
                pyro.sample("z", dist.Normal(p, 1.0).expand_by(z_shape))

    assert_error(model, model, match)


@FAMILIES
def test_nested_plate_plate_subsample_param_ok(latent):
    def model():
        with pyro.plate("plate_outer", 10, 5):
            pyro.sample("x", latent(torch.tensor(0.2)))
            with pyro.plate("plate_inner", 11, 6):
                pyro.sample("y", latent(torch.tensor(0.2)))

    def guide():
        assert pyro.param("p0", 0.5 * torch.ones(4, 5), event_dim=2).shape == (4, 5)
        with pyro.plate("plate_outer", 10, 5):
            assert pyro.param("p1", 0.5 * torch.ones(10, 3), event_dim=1).shape == (5, 3)
            px = pyro.param("px", 0.5 * torch.ones(10), constraint=constraints.unit_interval, event_dim=0)
            pyro.sample("x", latent(px))
            with pyro.plate("plate_inner", 11, 6):
                py = pyro.param("py", 0.5 * torch.ones(11, 10), constraint=constraints.unit_interval, event_dim=0)
                assert py.shape == (6, 5)
                pyro.sample("y", latent(py))

    check_family(latent, model, guide, INNER_SUBSAMPLE)


@FAMILIES
def test_nonnested_plate_plate_ok(latent):
    def make(p):
        def fn():
            with pyro.plate("plate_0", 10, 5) as i:
                pyro.sample("x0", latent(p()).expand_by([len(i)]))
            with pyro.plate("plate_1", 11, 6) as j:
                pyro.sample("x1", latent(p()).expand_by([len(j)]))
        return fn

    model, guide = make(lambda: torch.tensor(0.3)), make(param_p)
    if latent is normal:
        assert_refused(model, guide, "different outermost plates.*pass TraceIWAE_ELBO\\(plate=")
        # Named: x1 is a global of plate_0's points, drawn once per step (its plate_1 scale counted once).
        assert_runs(model, guide, plate="plate_0")
    else:
        check_family(latent, model, guide)


# ---------------------------------------------------------------- enumeration misuse, dim allocation, vectorized particles
outcome("test_enum_discrete_misuse_warning", refused=3)
outcome("test_dim_allocation_ok", refused=1)
outcome("test_dim_allocation_error", error=1)
outcome("test_vectorized_num_particles", run=1)


@pytest.mark.parametrize("enumerate_", [None, "sequential", "parallel"])
def test_enum_discrete_misuse_warning(enumerate_):
    def guide():
        pyro.sample("x", dist.Bernoulli(param_p()), infer={"enumerate": enumerate_})

    assert_refused(lambda: pyro.sample("x", dist.Bernoulli(0.5)), guide, NOT_REPARAM, max_plate_nesting=0)


@FAMILIES
def test_dim_allocation_ok(latent):
    def make(p):
        def fn():
            with pyro.plate("plate_outer", 10, 5, dim=-3):
                x = pyro.sample("x", latent(p()))
                with pyro.plate("plate_inner_1", 11, 6):
                    y = pyro.sample("y", latent(p()))
                    with pyro.plate("plate_inner_2", 12, 7):
                        z = pyro.sample("z", latent(p()))
                        with pyro.plate("plate_inner_3", 13, 8):
                            q = pyro.sample("q", latent(p()))
            shapes = [t.shape[-k:] for t, k in ((x, 3), (y, 3), (z, 3), (q, 4))]
            assert shapes == [(5, 1, 1), (5, 1, 6), (5, 7, 6), (8, 5, 7, 6)]
        return fn

    check_family(latent, make(lambda: torch.tensor(0.3)), make(param_p), INNER_SUBSAMPLE, max_plate_nesting=4)


def test_dim_allocation_error():
    def model():
        with pyro.plate("plate_outer", 10, 5, dim=-2):
            pyro.sample("x", dist.Normal(0.0, 1.0))
            with pyro.plate("plate_inner_1", 11, 6):
                pyro.sample("y", dist.Normal(0.0, 1.0))
                with pyro.plate("plate_inner_2", 12, 7, dim=-1):
                    pyro.sample("z", dist.Normal(0.0, 1.0))

    assert_error(model, model, "collide at dim=")


def test_vectorized_num_particles():
    data = torch.ones(1000, 2)

    def model():
        with pyro.plate("components", 2):
            p = pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))
            assert p.shape == (10, 1, 2)
            with pyro.plate("data", data.shape[0]):
                pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide():
        with pyro.plate("components", 2):
            pyro.sample("p", dist.Beta(pyro.param("a", torch.tensor(1.1)), torch.tensor(1.1)))

    assert_runs(model, guide, compare=False, num_particles=10, max_plate_nesting=2)


# ---------------------------------------------------------------- factors, masks, scales
outcome("test_factor_in_model_ok", run=1)
outcome("test_factor_in_guide_error", error=1)
outcome("test_factor_in_guide_ok", run=2)
outcome("test_reparam_ok", run=1)
outcome("test_reparam_mask_ok", run=4)
outcome("test_reparam_mask_plate_ok", run=5)
outcome("test_reparam_scale_ok", run=3)
outcome("test_reparam_scale_plate_ok", run=4)


def test_factor_in_model_ok():
    assert_runs(lambda: pyro.factor("f", torch.tensor(-1.5)), lambda: None)
    assert TraceIWAE_ELBO(3).loss(lambda: pyro.factor("f", torch.tensor(-1.5)), lambda: None) == 1.5


def test_factor_in_guide_error():
    assert_error(lambda: None, lambda: pyro.factor("f", torch.tensor(0.0)), "missing specification of has_rsample")


@pytest.mark.parametrize("has_rsample", [False, True])
def test_factor_in_guide_ok(has_rsample):
    guide = lambda: pyro.factor("f", torch.tensor(0.25), has_rsample=has_rsample)  # noqa: E731
    assert_runs(lambda: None, guide)
    assert TraceIWAE_ELBO(3).loss(lambda: None, guide) == 0.25  # minus (log p - log q) = -(0 - 0.25)


def gaussian_pair(mask=True, scale=1.0):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with poutine.mask(mask=mask), poutine.scale(scale=scale):
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.0))

    def guide():
        pyro.sample("x", dist.Normal(pyro.param("loc", torch.tensor(0.3)), 1.0))  # not the prior: DReG's gradient vanishes there

    return model, guide


def test_reparam_ok():
    assert_runs(*gaussian_pair())


@pytest.mark.parametrize("mask", [True, False, torch.tensor(True), torch.tensor(False)])
def test_reparam_mask_ok(mask):
    assert_runs(*gaussian_pair(mask=mask))


@pytest.mark.parametrize("scale", [1, 0.1, torch.tensor(0.5)])
def test_reparam_scale_ok(scale):
    assert_runs(*gaussian_pair(scale=scale))


def dirichlet_pair(mask=True, scale=1.0):
    data = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).exp()
    data /= data.sum(-1, keepdim=True)

    def model():
        c = pyro.sample("c", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        with pyro.plate("data", len(data)), poutine.mask(mask=mask), poutine.scale(scale=scale):
            pyro.sample("obs", dist.Dirichlet(c), obs=data)

    def guide():
        loc = pyro.param("loc", torch.full((3,), 0.2))  # not the prior: DReG's gradient vanishes there
        scale_ = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
        pyro.sample("c", dist.LogNormal(loc, scale_).to_event(1))

    return model, guide


@pytest.mark.parametrize("mask", [True, False, torch.tensor(True), torch.tensor(False), torch.tensor([False, True])])
def test_reparam_mask_plate_ok(mask):
    assert_runs(*dirichlet_pair(mask=mask))


@pytest.mark.parametrize("scale", [1, 0.1, torch.tensor(0.5), torch.tensor([0.1, 0.9])])
def test_reparam_scale_plate_ok(scale):
    assert_runs(*dirichlet_pair(scale=scale))


# ---------------------------------------------------------------- obs_mask: a per-point latent beside a global one
outcome("test_obs_mask_ok", run=10)
outcome("test_obs_mask_multivariate_ok", run=10)
outcome("test_obs_mask_multivariate_error", error=1)
MASKS = [torch.tensor(True), torch.tensor(False), torch.tensor([True]), torch.tensor([False])]


@pytest.mark.parametrize("num_particles", [1, 2])
@pytest.mark.parametrize("mask", MASKS + [torch.tensor([False, True, False])])
def test_obs_mask_ok(mask, num_particles):
    data = torch.tensor([7.0, 7.0, 7.0])

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.Normal(x, 1.0), obs=data, obs_mask=mask)
            assert ((y == data) == mask).all()

    def guide():
        x = pyro.sample("x", dist.Normal(pyro.param("loc", torch.zeros(())), 1.0))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.Normal(x, 1.0))

    assert_runs(model, guide, num_particles=num_particles + 1)


@pytest.mark.parametrize("num_particles", [1, 2])
@pytest.mark.parametrize("mask", MASKS + [torch.tensor([False, True, True, False])])
def test_obs_mask_multivariate_ok(mask, num_particles):
    data = torch.full((4, 3), 7.0)

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.MultivariateNormal(x, torch.eye(3)), obs=data, obs_mask=mask)
            assert ((y == data).all(-1) == mask).all()

    def guide():
        cov = pyro.param("cov", torch.eye(3), constraint=constraints.positive_definite)
        x = pyro.sample("x", dist.MultivariateNormal(pyro.param("loc", torch.zeros(3)), cov))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(3)))

    assert_runs(model, guide, num_particles=num_particles + 1)


def test_obs_mask_multivariate_error():
    data = torch.full((3, 2), 7.0)
    mask = torch.tensor([[False, False], [False, True], [True, False]])  # includes the event shape: invalid

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        with pyro.plate("plate", len(data)):
            pyro.sample("y", dist.MultivariateNormal(x, torch.eye(2)), obs=data, obs_mask=mask)

    def guide():
        x = pyro.sample("x", dist.MultivariateNormal(pyro.param("loc", torch.zeros(2)), torch.eye(2)))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(2)))

    assert_error(model, guide, "Invalid obs_mask shape")


# ---------------------------------------------------------------- block_plate, user plates named like particles, reparam
outcome("test_block_plate_name_ok", run=1)
outcome("test_block_plate_dim_ok", run=1)
outcome("test_block_plate_missing_error", error=1)
outcome("test_plate_shape_broadcasting", run=1)
outcome("test_reparam_stable", run=1)
outcome("test_ordered_logistic_plate", refused=1)


@pytest.mark.parametrize("by", ["name", "dim"], ids=["test_block_plate_name_ok", "test_block_plate_dim_ok"])
def test_block_plate_ok(by):
    blocked = {"name": {"name": "plate"}, "dim": {"dim": -1}}[by]

    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        assert a.shape == ()  # a global: drawn once per step, whatever the number of particles
        with pyro.plate("plate", 2):
            assert pyro.sample("b", dist.Normal(a, 1.0)).shape[-1:] == (2,)
            with poutine.block_plate(**blocked) if hasattr(poutine, "block_plate") else _block(**blocked):
                assert pyro.sample("c", dist.Normal(0.0, 1.0)).shape == ()

    def guide():
        assert pyro.sample("c", dist.Normal(pyro.param("c_loc", torch.tensor(0.5)), 1.0)).shape == ()
        with pyro.plate("plate", 2):
            pyro.sample("b", dist.Normal(pyro.param("b_loc", torch.tensor(0.5)), 1.0))
            with poutine.block_plate(**blocked) if hasattr(poutine, "block_plate") else _block(**blocked):
                assert pyro.sample("a", dist.Normal(pyro.param("a_loc", torch.tensor(0.5)), 1.0)).shape == ()

    assert_runs(model, guide)


def _block(**kwargs):
    from pyro.poutine.plate_messenger import block_plate

    return block_plate(**kwargs)


def test_block_plate_missing_error():
    def model():
        with _block(name="plate"):
            pyro.sample("a", dist.Normal(0, 1))

    assert_error(model, lambda: pyro.sample("a", dist.Normal(0, 1)), "block_plate matched 0 messengers")


def test_plate_shape_broadcasting():
    data = torch.ones(1000, 2)

    def model():
        with pyro.plate("num_particles", 10, dim=-3):
            with pyro.plate("components", 2, dim=-1):
                p = pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))
                assert p.shape[-3:] == (10, 1, 2)
            with pyro.plate("data", data.shape[0], dim=-2):
                pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide():
        with pyro.plate("num_particles", 10, dim=-3), pyro.plate("components", 2, dim=-1):
            pyro.sample("p", dist.Beta(pyro.param("a", torch.tensor(1.1)), torch.tensor(1.1)))

    assert_runs(model, guide)


def test_reparam_stable():
    @poutine.reparam(config={"z": LatentStableReparam()})
    def model():
        stability = pyro.sample("stability", dist.Uniform(0.0, 2.0))
        skew = pyro.sample("skew", dist.Uniform(-1.0, 1.0))
        y = pyro.sample("z", dist.Stable(stability, skew))
        pyro.sample("x", dist.Poisson(y.abs()), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("stability", dist.Delta(pyro.param("stability_map", torch.tensor(1.5))))
        pyro.sample("skew", dist.Delta(torch.tensor(0.0)))
        pyro.sample("z_uniform", dist.Delta(torch.tensor(0.1)))
        pyro.sample("z_exponential", dist.Delta(torch.tensor(1.0)))

    assert_runs(model, guide)


def test_ordered_logistic_plate():
    n, k = 5, 4
    data = torch.tensor([0.0, 3.0, 1.0, 2.0, 1.0])

    def model():
        predictor = pyro.sample("predictor", dist.Normal(0.0, 1.0).expand([n]).to_event(1))
        cutpoints = pyro.sample("cutpoints", dist.Normal(0.0, 1.0).expand([k - 1]).to_event(1))
        with pyro.plate("obs_plate", n):
            pyro.sample("obs", dist.OrderedLogistic(predictor, torch.sort(cutpoints, dim=-1).values), obs=data)

    def guide():
        pyro.sample("predictor", dist.Normal(pyro.param("pred_mu", torch.zeros(n)), 1.0).to_event(1))
        pyro.sample("cutpoints", dist.Normal(pyro.param("cp_mu", torch.zeros(k - 1)), 1.0).to_event(1))

    # One particle runs; with more, the predictor's event dim (size n) becomes the obs site's batch dim
    # beside the particle dim, left of the plates: refused rather than summed over the wrong dims.
    assert_runs(model, guide, num_particles=1)
    assert_refused(model, guide, "site 'obs' has a log_prob of shape \\(3, 3, 5\\), with batch dims left of")


def test_all_122_trace_elbo_cases_are_accounted_for():
    totals = {kind: sum(o[kind] for o in OUTCOMES.values()) for kind in ("run", "refused", "error")}
    assert sum(totals.values()) == 122
    assert totals == {"run": 50, "refused": 50, "error": 22}
