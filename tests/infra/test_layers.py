"""The layers of ARCHITECTURE.md, checked on the source.

* ``stages/`` adapts: no stage module imports apache_beam or uses ``beam.``; a stage
  builds Beam graphs only by applying a PTransform it imports from ``transforms/``
  (``clip``'s ``global_info`` calling ``transforms.thresholds.ExactRankThreshold`` is the model).
* ``rules/`` and ``cluster/`` are pure: they never import apache_beam, ``transforms``,
  ``stages``, ``registry`` or ``pipeline`` (not even inside a function), and importing
  all of them in a fresh interpreter leaves apache_beam unloaded.
"""

from __future__ import annotations

import ast
import glob
import importlib
import os
import subprocess
import sys

import pytest

import beam_filter

ROOT = os.path.dirname(beam_filter.__file__)
STAGES = sorted(glob.glob(os.path.join(ROOT, "stages", "*.py")))
PURE = sorted(glob.glob(os.path.join(ROOT, "rules", "*.py")) + glob.glob(os.path.join(ROOT, "cluster", "*.py")))
NOT_IN_PURE = ("apache_beam", "beam_filter.transforms", "beam_filter.stages", "beam_filter.registry",
               "beam_filter.pipeline")


def _rel(path: str) -> str:
    return os.path.relpath(path, os.path.dirname(ROOT))


def _beam_problems(path: str, imports_of) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = [f"{_rel(path)}:{line}: imports {mod}" for line, mod in imports_of(tree)
           if mod == "apache_beam" or mod.startswith("apache_beam.")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "beam":
            out.append(f"{_rel(path)}:{node.lineno}: uses beam.{node.attr}")
    return out


def test_the_files_are_found():
    names = {os.path.basename(p) for p in STAGES}
    assert {"rules.py", "datacomp.py", "cluster.py", "clip.py", "mlm.py"} <= names
    assert any(p.endswith(os.path.join("rules", "datacomp.py")) for p in PURE)
    assert any(p.endswith(os.path.join("cluster", "centroids.py")) for p in PURE)


@pytest.mark.parametrize("path", STAGES, ids=_rel)
def test_stage_modules_build_no_beam_graph_themselves(path, imports_of):
    assert _beam_problems(path, imports_of) == []


@pytest.mark.parametrize("path", STAGES, ids=_rel)
def test_stages_import_only_ptransforms_from_transforms(path):
    import apache_beam as beam

    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("beam_filter.transforms"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name)
                if not (isinstance(obj, type) and issubclass(obj, beam.PTransform)):
                    bad.append(f"{_rel(path)}:{node.lineno}: {node.module}.{alias.name} is not a PTransform")
        elif isinstance(node, ast.Import) and any(a.name.startswith("beam_filter.transforms")
                                                  for a in node.names):
            bad.append(f"{_rel(path)}:{node.lineno}: import the PTransform by name (from ... import X)")
    assert bad == []


@pytest.mark.parametrize("path", PURE, ids=_rel)
def test_pure_modules_import_no_beam_layer(path, imports_of):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    bad = [f"{_rel(path)}:{line}: imports {mod}" for line, mod in imports_of(tree)
           if any(mod == p or mod.startswith(p + ".") for p in NOT_IN_PURE)]
    assert bad == [] and _beam_problems(path, imports_of) == []


def test_pure_and_stage_modules_load_without_beam():
    """Importing every rules/, cluster/ and stages/ module must not load apache_beam
    (workers of the fused path and the CLI's recipe checks stay Beam-free)."""
    mods = [_rel(p)[:-3].replace(os.sep, ".").removesuffix(".__init__") for p in PURE + STAGES]
    probe = ("import importlib, sys\n"
             f"for m in {mods!r}:\n"
             "    importlib.import_module(m)\n"
             "    assert 'apache_beam' not in sys.modules, m\n"
             "print('OK', len(sys.argv))\n")
    env = {**os.environ, "BEAM_FILTER_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(ROOT), timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_the_check_catches_inline_beam(tmp_path, imports_of):
    bad = tmp_path / "bad_stage.py"
    bad.write_text("def verdicts(self, rows):\n    import apache_beam as beam\n"
                   "    return rows | beam.GroupByKey()\n")
    problems = _beam_problems(str(bad), imports_of)
    assert any("imports apache_beam" in p for p in problems)
    assert any("uses beam.GroupByKey" in p for p in problems)
