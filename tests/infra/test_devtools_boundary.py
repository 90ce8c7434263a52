"""The product package is the product: no module of beam_filter outside devtools imports beam_filter.devtools.

devtools (the make-sample pool, synthetic DataComp metadata, tiny model twins) is for
offline demos, tests and benchmarks; the developer commands import it inside the
function that needs it. Checked in a fresh interpreter, since this test session
imports devtools itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

import beam_filter

_PROBE = r"""
import importlib, os, sys
root = sys.argv[1]
mods = []
for d, dirs, files in os.walk(root):
    dirs[:] = sorted(x for x in dirs if x not in ("devtools", "__pycache__"))
    for f in sorted(files):
        if f.endswith(".py"):
            rel = os.path.relpath(os.path.join(d, f), os.path.dirname(root))[:-3].replace(os.sep, ".")
            mods.append(rel[: -len(".__init__")] if rel.endswith(".__init__") else rel)
for m in mods:
    importlib.import_module(m)
    if "beam_filter.devtools" in sys.modules:
        print("IMPORTS_DEVTOOLS", m)
        break
print("MODULES", len(mods))
"""


def test_no_product_module_imports_devtools():
    root = os.path.dirname(beam_filter.__file__)
    env = {**os.environ, "BEAM_FILTER_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, root], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTS_DEVTOOLS" not in proc.stdout, proc.stdout
    assert int(proc.stdout.split("MODULES")[1]) > 20      # the walk found the package


def test_sample_data_ships_with_devtools():
    from importlib import resources

    data = resources.files("beam_filter.devtools").joinpath("sample_data")
    assert sorted(p.name for p in data.iterdir() if p.name.endswith(".json")) == [
        "english_grammar.json", "other_language_captions.json"]
