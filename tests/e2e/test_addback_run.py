"""The add_back recipe section end to end: added rows are kept with their reason, in uids.npy, the
output shards, report.json and report.html; the fused and the general graph write the same bytes."""

from __future__ import annotations

import glob
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq

RECIPE = """
name: addback_demo
stages:
  - caption_length: {min_words: 7}
add_back:
  - long_enough: {type: caption_length, min_chars: 30}
"""


def _decisions(out):
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def test_added_back_rows_everywhere(clean_pool, tmp_path, run_cli):
    pool, manifest = clean_pool
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    outs = {}
    for mode, extra in (("fused", []), ("graph", ["--no-fusion"])):
        out = str(tmp_path / mode)
        assert run_cli("run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", out, *extra) == 0
        outs[mode] = out
    rows = _decisions(outs["fused"])
    for f in sorted(glob.glob(os.path.join(outs["fused"], "decisions", "*.parquet"))):
        twin = f.replace(outs["fused"], outs["graph"])
        assert open(f, "rb").read() == open(twin, "rb").read()

    added = [r for r in rows if r["reason"] == "added_back:long_enough"]
    still = [r for r in rows if r["stage"] == "caption_length" and not r["kept"]]
    assert added and still
    for r in added:
        words = len(r["caption"].split())
        assert r["kept"] and r["copies"] == 1 and r["stage"] == "caption_length"
        assert words < 7 and len(r["caption"]) >= 30
    assert all(len(r["caption"]) < 30 for r in still)

    out = outs["fused"]
    uids = {f"{a:016x}{b:016x}" for a, b in np.load(os.path.join(out, "uids.npy")).tolist()}
    assert {r["uid"] for r in added} <= uids and not {r["uid"] for r in still} & uids
    written = []          # output sample names: a kept sample keeps its key (one copy)
    for t in glob.glob(os.path.join(out, "shards", "*.tar")):
        with tarfile.open(t) as tar:
            written += sorted({m.name.rsplit(".", 1)[0] for m in tar.getmembers()})
    assert {r["key"] for r in added} <= set(written) and len(written) == sum(r["kept"] for r in rows)

    report = json.load(open(os.path.join(out, "report.json")))
    assert report["added_back"] == {"long_enough": len(added)}
    step = report["funnel"][-1]
    assert step["stage"] == "add_back" and step["added"] == len(added)
    assert step["out"] == report["counts"]["kept"]
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert 'class="added-back" data-stage="long_enough" data-count="%d"' % len(added) in html
