"""`beam-filter select --metadata` with the columnar path (columnar.py) on and off
(``BEAM_FILTER_COLUMNAR``): every DataComp baseline preset, a uid subset with copies and a recipe
with a rule that has no vectorised hook write the same decisions files, uids.npy and thresholds,
byte for byte."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_filter.columnar import ENV_SWITCH


def _files(out: str) -> dict[str, bytes]:
    found = {}
    for pattern in ("decisions/*.parquet", "thresholds/*", "uids.npy"):
        for path in sorted(glob.glob(os.path.join(out, pattern))):
            with open(path, "rb") as f:
                found[os.path.relpath(path, out)] = f.read()
    return found


@pytest.fixture(scope="module")
def recipe_files(tmp_path_factory, datacomp_meta):
    """Recipes beyond the presets: text_based, a uid subset listing uids 1-3 times, and a rule
    (has_digits on the caption) without a vectorised hook in an any_of with one that has it."""
    import pyarrow.parquet as pq
    import yaml

    from beam_filter.uids import save_uids, uids_to_array

    d = tmp_path_factory.mktemp("columnar_recipes")
    uids = [u for p in sorted(glob.glob(os.path.join(datacomp_meta.dir, "metadata", "*.parquet")))
            for u in pq.read_table(p, columns=["uid"]).column(0).to_pylist()]
    listed = uids[::2] + uids[::5] + uids[::5] + uids[::7]
    save_uids(str(d / "subset.npy"), uids_to_array(listed))
    recipes = {
        "text_based": [{"text_based": {}}],
        "uid_copies": [{"uid_subset": {"path": str(d / "subset.npy")}}, {"datacomp_basic": {}}],
        "no_hook": [{"any_of": {"stages": [{"datacomp_basic": {}}, {"has_digits": {"column": "caption"}}]}}],
    }
    paths = {}
    for name, stages in recipes.items():
        paths[name] = str(d / f"{name}.yaml")
        with open(paths[name], "w") as f:
            yaml.safe_dump({"name": name, "stages": stages}, f)
    return paths


RECIPES = ["datacomp_basic", "datacomp_b32_th025", "datacomp_clip_l14_30pct", "laion2b", "image_based",
           "image_based_intersect_clip_score", "text_based", "uid_copies", "no_hook"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_columnar_select_writes_the_row_paths_files(recipe, datacomp_meta, recipe_files, tmp_path):
    spec = recipe_files.get(recipe, recipe)
    extra = [a for ov in datacomp_meta.overrides for a in ("--set", ov)] if recipe.startswith("image_based") else []
    outs = {}
    for switch in ("1", "0"):
        # A fresh process each: the local pool's forkserver keeps the environment it started with.
        out = str(tmp_path / f"out{switch}")
        done = subprocess.run([sys.executable, "-m", "beam_filter.cli", "select", "--recipe", spec, "--metadata",
                               os.path.join(datacomp_meta.dir, "metadata"), "--output", out, "--no-progress",
                               *extra], env={**os.environ, ENV_SWITCH: switch}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outs[switch] = _files(out)
    assert sorted(outs["1"]) == sorted(outs["0"])
    assert len([n for n in outs["1"] if n.startswith("decisions/")]) == 3
    for name in outs["0"]:
        assert outs["1"][name] == outs["0"][name], name
    kept = np.load(tmp_path / "out1" / "uids.npy")
    assert 0 < len(kept) < datacomp_meta.rows or recipe == "uid_copies"
    if recipe == "uid_copies":          # a uid listed k times is kept k times
        assert len(np.unique(kept)) < len(kept)
