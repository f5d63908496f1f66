#!/usr/bin/env python
"""Mutation testing of the core numerical modules, on a copy of the committed tree.

Usage (from the repository root; documented in docs/reliability.md)::

    nice -n 15 python scripts/mutation_testing.py                # every module, every mutant
    nice -n 15 python scripts/mutation_testing.py --module pyro_mapa/table/sampling.py
    nice -n 15 python scripts/mutation_testing.py --only 3,17 --module ...   # rerun chosen mutants
    nice -n 15 python scripts/mutation_testing.py --jobs 4                   # four mutants at a time

What it does:

1. Exports ``git HEAD`` into a temporary copy (``git archive``; the working tree is never
   touched) and copies the *current* test files over it, so the tests under review run
   against the committed package.
2. Parses each module and enumerates a standard set of AST mutants, one change each:
   ``+ <-> -``, ``* <-> /``, ``** -> *``, ``// -> /``, ``< <-> <=``, ``> <-> >=``,
   ``== <-> !=``, ``is <-> is not``, ``in <-> not in``, ``and <-> or``, dropping ``not`` and
   unary minus, integer ``n -> n + 1``, float ``x -> x + 1``, ``True <-> False``,
   ``min <-> max`` (calls, methods and keywords), and reductions
   ``logsumexp -> sum``, ``logaddexp -> maximum``, ``logcumsumexp -> cumsum``,
   ``log -> log1p``, ``exp -> expm1``. Docstrings and string constants are not mutated.
3. Imports torch, Pyro, pytest and the package *once*, then forks one child per mutant.
   The child compiles the mutated module and swaps each function's ``__code__`` (and
   defaults, class attributes and module constants) in place, so every reference to it,
   including ``from ... import`` copies in other modules, sees the mutant; then it runs
   the module's test files with ``pytest -x -q -p no:cacheprovider``. Exit status != 0 is
   *killed*; a child over the time limit is *timeout* (counted as killed, as mutmut does).

Results are printed and written as JSON to ``--out`` (default ``mutation_results.json``
in the temporary copy; the path is printed).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types

__all__ = ["MODULE_TESTS", "enumerate_mutants", "main"]

#: Module under test -> the fast test files that should kill its mutants.
MODULE_TESTS: dict[str, list[str]] = {
    "pyro_mapa/table/sampling.py": [
        "tests/table/test_sampling.py",
        "tests/table/test_posterior_table.py",
        "tests/infer/test_mapa_elbo.py",
    ],
    "pyro_mapa/infer/mapa_elbo.py": ["tests/infer/test_mapa_elbo.py"],
    "pyro_mapa/infer/iwae_elbo.py": ["tests/infer/test_iwae_elbo.py", "tests/infer/test_subnormal.py"],
    "pyro_mapa/infer/_importance_elbo.py": ["tests/infer/test_importance_elbo_base.py", "tests/infer/test_iwae_elbo.py",
                                            "tests/infer/test_mapa_elbo.py", "tests/infer/test_subnormal.py"],
    "pyro_mapa/table/kernels.py": ["tests/table/test_kernels.py", "tests/table/test_posterior_table.py"],
    "pyro_mapa/evaluation/exact.py": ["tests/evaluation/test_exact_evaluation.py"],
    "pyro_mapa/evaluation/index_loglik.py": ["tests/evaluation/test_index_loglik.py",
                                             "tests/evaluation/test_exact_evaluation.py"],
}

_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.FloorDiv: ast.Div}
_CMPOP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_NAMES = {"min": "max", "max": "min", "logsumexp": "sum", "logaddexp": "maximum",
          "logcumsumexp": "cumsum", "log": "log1p", "exp": "expm1", "amin": "amax", "amax": "amin"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str, object]]:
    """Every (node, kind, detail) mutation site, in a deterministic order."""
    skip = _docstring_nodes(tree)
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP:
            sites.append((node, "binop", None))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _CMPOP:
                    sites.append((node, "cmpop", i))
        elif isinstance(node, ast.BoolOp):
            sites.append((node, "boolop", None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            sites.append((node, "unary", None))
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            if isinstance(node.value, bool) or (isinstance(node.value, (int, float)) and not isinstance(node.value, complex)):
                sites.append((node, "const", None))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in _NAMES:
                sites.append((node, "call", name))
        elif isinstance(node, ast.keyword) and node.arg in ("min", "max"):
            sites.append((node, "kw", node.arg))
    return sites


def _describe(node: ast.AST, kind: str, detail: object) -> str:
    line = getattr(node, "lineno", "?")
    if kind == "binop":
        return f"L{line}: {type(node.op).__name__} -> {_BINOP[type(node.op)].__name__}"
    if kind == "cmpop":
        op = node.ops[detail]
        return f"L{line}: {type(op).__name__} -> {_CMPOP[type(op)].__name__}"
    if kind == "boolop":
        return f"L{line}: {type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'}"
    if kind == "unary":
        return f"L{line}: drop {type(node.op).__name__}"
    if kind == "const":
        return f"L{line}: {node.value!r} -> {_new_const(node.value)!r}"
    if kind == "call":
        return f"L{line}: {detail} -> {_NAMES[detail]}"
    return f"L{line}: keyword {detail}= -> {'max' if detail == 'min' else 'min'}="


def _new_const(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    return v + 1.0


class _Unary(ast.NodeTransformer):
    def __init__(self, target):
        self.target = target

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return node.operand if node is self.target else node


def enumerate_mutants(source: str, path: str) -> list[tuple[str, ast.Module]]:
    """``[(description, mutated tree)]``, one mutant per site."""
    out = []
    n = len(_sites(ast.parse(source, path)))
    for i in range(n):
        tree = ast.parse(source, path)
        node, kind, detail = _sites(tree)[i]
        desc = _describe(node, kind, detail)
        if kind == "binop":
            node.op = _BINOP[type(node.op)]()
        elif kind == "cmpop":
            node.ops[detail] = _CMPOP[type(node.ops[detail])]()
        elif kind == "boolop":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif kind == "unary":
            tree = _Unary(node).visit(tree)
        elif kind == "const":
            node.value = _new_const(node.value)
        elif kind == "call":
            if isinstance(node.func, ast.Attribute):
                node.func.attr = _NAMES[detail]
            else:
                node.func.id = _NAMES[detail]
        elif kind == "kw":
            node.arg = "max" if detail == "min" else "min"
        ast.fix_missing_locations(tree)
        out.append((desc, tree))
    return out


def _patch_function(old, new) -> None:
    old.__code__ = new.__code__
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__


def _patch_class(old: type, new: type) -> None:
    for key, val in new.__dict__.items():
        if key in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
            continue
        cur = old.__dict__.get(key)
        if isinstance(val, types.FunctionType) and isinstance(cur, types.FunctionType):
            _patch_function(cur, val)
        elif isinstance(val, (staticmethod, classmethod)) and type(cur) is type(val):
            _patch_function(cur.__func__, val.__func__)
        elif isinstance(val, property) and isinstance(cur, property):
            for a in ("fget", "fset", "fdel"):
                if getattr(val, a) is not None and getattr(cur, a) is not None:
                    _patch_function(getattr(cur, a), getattr(val, a))
        elif not isinstance(val, (types.FunctionType, staticmethod, classmethod, property)):
            try:
                setattr(old, key, val)
            except (AttributeError, TypeError):
                pass


def _apply(module: types.ModuleType, tree: ast.Module, path: str) -> None:
    """Executes the mutated module and patches the live module in place."""
    code = compile(tree, path, "exec")
    ns = {"__name__": module.__name__, "__package__": module.__package__, "__file__": module.__file__}
    exec(code, ns)
    for key, val in ns.items():
        cur = module.__dict__.get(key)
        if isinstance(val, types.FunctionType) and isinstance(cur, types.FunctionType):
            _patch_function(cur, val)
        elif isinstance(val, type) and isinstance(cur, type) and getattr(cur, "__module__", None) == module.__name__:
            _patch_class(cur, val)
        elif isinstance(val, (int, float, str, bool)) and not key.startswith("__"):
            setattr(module, key, val)


def _run_child(module_name: str, tree, path: str, tests: list[str], quiet_log: str) -> int:
    import importlib

    import pytest

    _apply(importlib.import_module(module_name), tree, path)
    fd = os.open(quiet_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return int(pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-W", "error"]))


def _start(module_name, tree, path, tests, log) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            code = _run_child(module_name, tree, path, tests, log)
        except BaseException:  # a mutant that breaks the import is killed
            code = 4
        finally:
            os._exit(code)
    return pid


def _poll(pid: int, t0: float, timeout: float) -> str | None:
    """``None`` while running, else ``"killed"``, ``"survived"`` or ``"timeout"``."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
    if time.time() > t0 + timeout:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "timeout"
    return None


def _fork_run(module_name, tree, path, tests, timeout, log) -> tuple[str, float]:
    t0 = time.time()
    pid = _start(module_name, tree, path, tests, log)
    while (st := _poll(pid, t0, timeout)) is None:
        time.sleep(0.05)
    return st, time.time() - t0


def _run_all(module_name, mutants, path, tests, timeout, log, jobs, report):
    """Runs ``[(id, desc, tree)]`` with up to ``jobs`` children at once; ``report(row)`` per result."""
    pending, running, rows = list(mutants), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            i, desc, tree = pending.pop(0)
            running[i] = (desc, _start(module_name, tree, path, tests, f"{log}.{i}"), time.time())
        for i, (desc, pid, t0) in list(running.items()):
            st = _poll(pid, t0, timeout)
            if st is not None:
                del running[i]
                row = {"id": i, "mutant": desc, "status": st, "seconds": round(time.time() - t0, 1)}
                rows.append(row)
                report(row)
        time.sleep(0.05)
    return sorted(rows, key=lambda r: r["id"])


def _prepare_copy(repo: str, dest: str) -> None:
    archive = subprocess.run(["git", "-C", repo, "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    # The tests under review are the working tree's (HEAD's package, today's tests).
    shutil.rmtree(os.path.join(dest, "tests"))
    shutil.copytree(os.path.join(repo, "tests"), os.path.join(dest, "tests"),
                    ignore=shutil.ignore_patterns("__pycache__"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", help="module path(s); default: all of MODULE_TESTS")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers to run")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tests", default="", help="comma-separated test files replacing MODULE_TESTS[module]")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (one process each)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    modules = args.module or list(MODULE_TESTS)
    only = {int(s) for s in args.only.split(",") if s}
    if args.out:
        args.out = os.path.abspath(args.out)  # before the chdir into the temporary copy

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="mutants_")
    _prepare_copy(repo, work)
    os.chdir(work)
    sys.path.insert(0, work)
    sys.path.insert(0, os.path.join(work, "tests"))
    os.environ["PYTHONPATH"] = work + os.pathsep + os.environ.get("PYTHONPATH", "")
    import pyro  # noqa: F401  (imported once, shared by every forked child)
    import pytest  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import pyro_mapa  # noqa: F401

    assert pyro_mapa.__file__.startswith(work), f"imported {pyro_mapa.__file__}, not the copy"
    results: dict[str, dict] = {}
    log = os.path.join(work, "child.log")
    for path in modules:
        tests = args.tests.split(",") if args.tests else [t for t in MODULE_TESTS[path] if os.path.exists(t)]
        module_name = path[:-3].replace("/", ".")
        source = open(path).read()
        mutants = enumerate_mutants(source, path)
        if args.list:
            for i, (desc, _) in enumerate(mutants):
                print(f"{path} #{i}: {desc}")
            continue
        status, base = _fork_run(module_name, ast.parse(source, path), path, tests, 900, log)
        if status != "survived":
            print(f"{path}: the unmutated tests fail ({status}); see {log}")
            return 2
        timeout = args.timeout_factor * base + 10
        chosen = [(i, d, t) for i, (d, t) in enumerate(mutants) if not only or i in only]
        rows = _run_all(module_name, chosen, path, tests, timeout, log, args.jobs,
                        lambda r: print(f"{path} #{r['id']} {r['mutant']}: {r['status']} ({r['seconds']} s)", flush=True))
        killed = sum(r["status"] != "survived" for r in rows)
        results[path] = {"killed": killed, "total": len(rows), "baseline_seconds": round(base, 1), "commit": commit,
                         "tests": tests, "mutants": rows}
        print(f"== {path}: {killed}/{len(rows)} killed", flush=True)
    out = args.out or os.path.join(work, "mutation_results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {out}")
    for path, r in results.items():
        print(f"{path}: {r['killed']}/{r['total']} killed; survived: "
              + ", ".join(f"#{m['id']} {m['mutant']}" for m in r["mutants"] if m["status"] == "survived"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
