"""Bad arguments to the table get a ValueError/TypeError that names the argument (and files name the target path)."""

import math
import os

import pytest
import torch

from pyro_mapa import GaussianKernel, PosteriorTable
from pyro_mapa.table.counter_rng import counter_uniform


@pytest.fixture
def table():
    return PosteriorTable.from_data(torch.randn(12, 2, generator=torch.Generator().manual_seed(0)), GaussianKernel(0.7))


def test_meta_device_is_refused():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="device='meta' holds shapes but no values"):
        PosteriorTable.from_data(x, GaussianKernel(1.0), device="meta")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        PosteriorTable.from_data(x, GaussianKernel(1.0), device="warp-drive")


@pytest.mark.parametrize("m, exc, match", [(5, ValueError, r"max_support must lie in \[1, N=4\], got 5"),
                                            (0, ValueError, "max_support must lie in"),
                                            (2.0, TypeError, "max_support must be an int")])
def test_from_log_probs_max_support(m, exc, match):
    lp = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(exc, match=match):
        PosteriorTable.from_log_probs(lp, max_support=m)
    ok = PosteriorTable.from_log_probs(lp, max_support=4)
    torch.testing.assert_close(ok.log_probs.exp().sum(1), torch.ones(3))


def test_cache_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "not_a_folder"
    f.write_text("x")
    with pytest.raises(ValueError, match="cache_dir=.*not_a_folder' is a file, not a folder"):
        PosteriorTable.cached(torch.randn(6, 2), GaussianKernel(1.0), f)
    with pytest.raises(TypeError, match="cache_dir must be a folder path"):
        PosteriorTable.cached(torch.randn(6, 2), GaussianKernel(1.0), 3)


def test_save_errors_name_the_target_path_not_a_temporary_file(table, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    target = f / "table.pt"
    with pytest.raises(OSError) as info:
        table.save(target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)
    with pytest.raises(ValueError, match="it is a directory"):
        table.save(tmp_path)
    if os.path.isdir("/proc") and not os.access("/proc", os.W_OK):
        with pytest.raises(OSError) as info:
            table.save("/proc/x.pt")
        assert "/proc/x.pt" in str(info.value) and ".tmp" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "no temporary file is left behind"


@pytest.mark.parametrize("bad", [-1.0, 0.0, 1.5, math.nan])
def test_uniforms_outside_zero_one_are_refused_with_replacement(table, bad):
    u = torch.full((3, 2), 0.5)
    u[1, 1] = bad
    with pytest.raises(ValueError, match=r"uniforms must lie in \(0, 1\]"):
        table.sample_remainder(torch.arange(3), 1, 2, uniforms=u)


@pytest.mark.parametrize("bad", [-1.0, -1e-30, 1.5, math.nan])
def test_uniforms_outside_zero_one_are_refused_without_replacement(table, bad):
    u = torch.full((3, 11), 0.5)
    u[2, 4] = bad
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0, 1\]"):
        table.sample_remainder_without_replacement(torch.arange(3), 1, 2, uniforms=u)


def test_valid_uniforms_still_draw(table):
    """u = 1 is the most probable remainder entry, a tiny u the least probable one; counter uniforms work."""
    rows = torch.arange(3)
    top = table.sample_remainder(rows, 1, 1, uniforms=torch.ones(3, 1))
    assert torch.equal(top.indices[:, 0], table.indices[:3, 1])
    low = table.sample_remainder(rows, 1, 1, uniforms=torch.full((3, 1), 1e-30))
    assert torch.equal(low.indices[:, 0], table.indices[:3, -1])
    u = counter_uniform(0, 1, rows, 11)
    assert table.sample_remainder_without_replacement(rows, 1, 2, uniforms=u).indices.shape == (3, 2)
    with pytest.raises(TypeError, match="floating-point"):
        table.sample_remainder(rows, 1, 1, uniforms=torch.ones(3, 1, dtype=torch.long))


@pytest.mark.parametrize("high", [1.0, 1 - 2.0**-40])
def test_gumbel_of_a_uniform_rounding_to_one_stays_finite(table, high):
    """counter_uniform can give 1 - 2^-54, which is 1.0 in float64; 1 - 2^-40 is 1.0 in the float32 table:
    both are clamped below 1 (a finite Gumbel; three infinite ones would make the threshold κ infinite and
    the inclusion weights NaN or infinite), and the largest uniforms still win their row."""
    u = torch.full((3, 11), 0.5, dtype=torch.float64)
    u[:, 3:6] = high
    out = table.sample_remainder_without_replacement(torch.arange(3), 1, 2, uniforms=u)
    assert torch.isfinite(out.log_probs).all()
    for r in range(3):  # two of the three entries 4-6 of the sorted row (remainder positions 3-5)
        assert set(out.indices[r].tolist()) <= set(table.indices[r, 4:7].tolist())
