"""The package layout's rules (docs/design.md, "Layout"): checked on the source, so a change that breaks one fails here."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_mapa"
# Lower layers first; a module may import from its own layer or any layer before it.
LAYERS = ["errors", "_io", "table", "models", "infer", "evaluation", "priors", "diagnostics", "training",
          "datasets", "methods", "experiments", "cli", "__main__", "__init__"]
PUBLIC_PYRO = {"pyro", "pyro.infer", "pyro.infer.autoguide", "pyro.poutine", "pyro.distributions", "pyro.optim", "pyro.nn"}
COMPAT = PACKAGE / "infer" / "_pyro_compat.py"
MAX_LINES = 450


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(path: Path) -> int:
    rel = path.relative_to(PACKAGE)
    head = rel.parts[0].removesuffix(".py")
    if len(rel.parts) > 1 and rel.parts[-1] == "__init__.py" and head != "__init__":
        return LAYERS.index(head)
    return LAYERS.index(head)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    base = parts[: len(parts) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(path, node)
            for alias in node.names:
                yield mod, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def test_every_module_is_short():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_layers_import_downward_only():
    bad = []
    for path in _modules():
        mine = _layer(path)
        for mod, name in _imports(path):
            if not mod.startswith("pyro_mapa"):
                continue
            parts = mod.split(".")
            target = parts[1] if len(parts) > 1 else (name or "__init__")
            if target not in LAYERS:
                bad.append(f"{path.relative_to(PACKAGE)} imports unknown {mod}")
            elif LAYERS.index(target) > mine:
                bad.append(f"{path.relative_to(PACKAGE)} (layer {LAYERS[mine]}) imports upward: {mod}")
    assert not bad, "\n".join(bad)


def _public_pyro_name(module: str, name: str | None) -> bool:
    if module not in PUBLIC_PYRO:
        return False
    if name is None:
        return True
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    return (exported is not None and name in exported) or (
        not name.startswith("_") and hasattr(mod, name) and module == "pyro.distributions"
    )


def test_only_pyro_compat_touches_pyro_internals():
    bad = []
    for path in _modules():
        if path == COMPAT:
            continue
        for mod, name in _imports(path):
            if mod == "pyro" or mod.startswith("pyro."):
                if not _public_pyro_name(mod, name) and not (mod == "pyro" and name is None):
                    bad.append(f"{path.relative_to(PACKAGE)}: from {mod} import {name}")
        src = path.read_text()
        for needle in ("._params", "._get_traces", "pyro.infer.util", "pyro.poutine.util", "pyro.poutine.runtime",
                       "pyro.distributions.util", "num_particles_vectorized"):
            if needle in src:
                bad.append(f"{path.relative_to(PACKAGE)} uses {needle}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_an_internal_import():
    """The rule above is not vacuous: an internal Pyro name is recognised as such."""
    assert not _public_pyro_name("pyro.infer.enum", "get_importance_trace")
    assert not _public_pyro_name("pyro.poutine", "Messenger")  # lives in pyro.poutine.messenger only
    assert _public_pyro_name("pyro.infer", "ELBO")


@pytest.mark.parametrize("heavy", ["arviz", "zuko", "matplotlib", "pandas"])
def test_import_is_cheap(heavy):
    code = f"import sys, pyro_mapa; assert {heavy!r} not in sys.modules, sorted(m for m in sys.modules if {heavy!r} in m)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_public_api_matches_docstring():
    import pyro_mapa

    for name in pyro_mapa.__all__:
        assert hasattr(pyro_mapa, name), name
        assert name in pyro_mapa.__doc__, f"{name} is exported but not listed in pyro_mapa's docstring"


REPRODUCTION_MODULES = ("reproduce", "check", "provenance", "figures", "collapse_summary", "libi_benchmarks",
                        "libi_metrics")


def test_installed_package_holds_no_reproduction_code():
    """The paper's machinery lives in experiments/pyro_mapa_experiments, which the library does not install."""
    names = {p.stem for p in _modules()}
    assert not names & set(REPRODUCTION_MODULES), sorted(names & set(REPRODUCTION_MODULES))
    experiments = PACKAGE.parent / "experiments" / "pyro_mapa_experiments"
    assert {p.stem for p in experiments.glob("*.py")} >= set(REPRODUCTION_MODULES)
    # only the CLI reaches it, on demand, by name (importlib) and never by an import statement
    offenders = [str(p.relative_to(PACKAGE)) for p in _modules()
                 if any(mod.startswith("pyro_mapa_experiments") for mod, _ in _imports(p))]
    assert not offenders, offenders
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE.parent / "setup.cfg")
    assert cfg["options.packages.find"]["include"].split(",")[0].strip() == "pyro_mapa"
    assert "pyro_mapa_experiments" not in cfg["options.packages.find"]["include"]
