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
