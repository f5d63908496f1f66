"""The aliases kept for one release after the move (CHANGELOG.md): they warn and give the new objects."""

import importlib
import sys

import pytest


@pytest.mark.parametrize("old, new, name", [("pyro_mapa.experiments.datasets", "pyro_mapa.datasets", "load_dataset"),
                                            ("pyro_mapa.experiments.methods", "pyro_mapa.methods", "build_method")])
def test_old_module_warns_and_aliases_the_new(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: import {new}"):
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)
    assert set(mod.__all__) == set(importlib.import_module(new).__all__)


def test_check_count_is_a_warning_alias_of_check_nonnegative_int():
    from pyro_mapa.errors import check_count, check_nonnegative_int

    assert check_nonnegative_int(3, "n") == 3
    with pytest.warns(DeprecationWarning, match="check_count is deprecated: use check_nonnegative_int"):
        assert check_count(3, "n") == 3
    with pytest.raises(ValueError, match="n must be >= 0"), pytest.warns(DeprecationWarning):
        check_count(-1, "n")
