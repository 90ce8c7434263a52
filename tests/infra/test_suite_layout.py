"""This test suite's own arrangement (tests/README.md): layers by directory, fixtures instead of imports.

* a test module lives in tests/unit, tests/beam, tests/e2e, tests/infra or tests/faults;
* no test module imports conftest or another test module: what modules share is a fixture;
* a unit module runs nothing: it imports neither apache_beam, beam_filter.cli nor subprocess,
  and does not ask for the ``run_cli`` fixture.
"""

from __future__ import annotations

import ast
import pathlib


TESTS = pathlib.Path(__file__).resolve().parents[1]
DIRS = ("unit", "beam", "e2e", "infra", "faults")
MODULES = sorted(TESTS.rglob("test_*.py"))
NOT_IN_UNIT = ("apache_beam", "beam_filter.cli", "subprocess")


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(TESTS))


def _tree(path: pathlib.Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_the_modules_are_found():
    assert len(MODULES) > 30 and {p.parent.name for p in MODULES} == set(DIRS)


def test_every_module_is_in_a_layer_directory():
    assert [_rel(p) for p in MODULES if not (p.parent.parent == TESTS and p.parent.name in DIRS)] == []


def test_no_module_imports_a_test_module_or_conftest(imports_of):
    local = {p.stem for p in TESTS.rglob("*.py")}          # test modules, conftest, faults/fuzz.py
    bad = [f"{_rel(p)}:{line}: imports {mod}" for p in MODULES for line, mod in imports_of(_tree(p))
           if mod.split(".")[0] in local]
    assert bad == []


def test_unit_modules_run_nothing(imports_of):
    bad = []
    for p in (p for p in MODULES if p.parent.name == "unit"):
        tree = _tree(p)
        bad += [f"{_rel(p)}:{line}: imports {mod}" for line, mod in imports_of(tree)
                if any(mod == m or mod.startswith(m + ".") for m in NOT_IN_UNIT)]
        bad += [f"{_rel(p)}:{node.lineno}: {node.name} asks for run_cli" for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and "run_cli" in [a.arg for a in node.args.args]]
    assert bad == []
